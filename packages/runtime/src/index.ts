export { type BindMount, parseBind } from './bind.js'
export { type BuildEnvironmentOptions, DEFAULT_PASSTHROUGH, DEFAULT_PATH, buildEnvironment } from './env.js'
export { type RunOptions, type RunResult, runContainer } from './run.js'
export { BUILD_CAPABILITIES } from './spec.js'
