export * from './tar/index.js'
export * from './fsimage/index.js'
