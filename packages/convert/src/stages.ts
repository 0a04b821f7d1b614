import { argumentWords, flagsOf, type Instr } from './dockerfile.js'
import { expand, expandText } from './expand.js'
import { finishStage } from './finish.js'
import { type FromOut, KNOWN_DIRS, type LayerOut, type Stage } from './model.js'
import { type ConvertState, currentLayer, newLayer } from './state.js'
import { concat, isLiteral, type Template, textOf } from './words.js'

/** FROM: ends the previous stage and starts one, from an image, scratch or an earlier stage. */
export function fromInstruction(st: ConvertState, instr: Instr): void {
  const prev = st.stages[st.stages.length - 1]
  if (prev) finishStage(st, prev)
  const words = argumentWords(instr)
  const image = words[0] ?? ''
  const name = words.length === 3 ? words[2]?.toLowerCase() : undefined
  const ref = expand(st, image, undefined, `FROM ${image}`)
  const refText = textOf(ref)
  if (refText === '') st.fail(`base name (${image}) should not be blank`)
  const index = st.stages.length
  const parent = st.stages.find((s) => s.name === refText.toLowerCase())
  if (parent && !isLiteral(ref))
    st.warn(
      `FROM ${image}: names stage ${parent.name} with the build arguments' defaults; overriding them does not change it`,
    )

  let platform: { os: string; arch: string } | undefined
  for (const f of flagsOf(instr)) {
    if (f.name !== 'platform') continue
    const p = expandText(st, f.value ?? '', undefined, `FROM --platform=${f.value}`)
    const [os, arch, variant] = p.split('/')
    if (!os || !arch) st.fail(`invalid platform ${JSON.stringify(p)}: expected os/arch[/variant]`)
    if (variant) st.warn(`FROM --platform=${p}: stacker.yaml has no platform variant; ${variant} is dropped`)
    if (os !== st.platform.os || arch !== st.platform.arch) platform = { os, arch }
  }

  const layerName = st.uniqueName(name ?? `stage-${index}`)
  const stage: Stage = parent
    ? childStage(parent, index, instr.line, name, layerName)
    : rootStage(index, instr.line, name, layerName)
  if (parent) {
    parent.used = true
    if (platform) st.warn(`FROM --platform on a stage (${refText}) is ignored: the stage keeps its own platform`)
  }
  stage.platform = platform ?? parent?.platform
  let from: FromOut
  if (parent) from = { type: 'built', tag: parent.layerName }
  else if (refText.toLowerCase() === 'scratch' && isLiteral(ref)) from = { type: 'scratch' }
  else {
    from = { type: 'docker', url: concat('docker://', ref), insecure: isLoopbackRegistry(ref) }
    stage.externalRef = refText
    stage.externalLine = instr.line
  }
  stage.layers.push(newLayer(layerName, from, stage))
  st.stages.push(stage)
}

function rootStage(index: number, line: number, name: string | undefined, layerName: string): Stage {
  return {
    index,
    line,
    name,
    layerName,
    layers: [],
    effectful: false,
    parent: undefined,
    externalRef: undefined,
    externalLine: line,
    platform: undefined,
    args: new Map(),
    env: [],
    labels: [],
    annotations: [],
    volumes: [],
    exposedPorts: [],
    workdir: ['/'],
    workdirSet: false,
    user: undefined,
    shell: ['/bin/sh', '-c'],
    cmd: undefined,
    entrypoint: undefined,
    cmdSet: false,
    knownDirs: new Set(KNOWN_DIRS),
    hasRun: false,
    workdirLines: [],
    importDests: [],
    used: false,
  }
}

/** A stage `FROM` an earlier one: it starts from that stage's config, as Docker's image does. */
function childStage(p: Stage, index: number, line: number, name: string | undefined, layerName: string): Stage {
  return {
    ...rootStage(index, line, name, layerName),
    parent: p,
    externalRef: p.externalRef,
    externalLine: p.externalLine,
    env: [...p.env],
    labels: [...p.labels],
    annotations: [...p.annotations],
    volumes: [...p.volumes],
    exposedPorts: [...p.exposedPorts],
    workdir: p.workdir,
    workdirSet: p.workdirSet,
    user: p.user,
    shell: [...p.shell],
    cmd: p.cmd,
    entrypoint: p.entrypoint,
    knownDirs: new Set(p.knownDirs),
    hasRun: p.hasRun,
  }
}

/** The layer a COPY goes into: a new one when a RUN came after the current one's imports, since a
 *  layer's imports are in place before its run script starts. */
export function layerForImport(st: ConvertState, stage: Stage): LayerOut {
  const cur = currentLayer(stage)
  if (!stage.effectful) return cur
  // The layer so far keeps a numbered name; the stage's name moves to the new last layer.
  cur.name = st.uniqueName(`${stage.layerName}.${stage.layers.length}`)
  const next = newLayer(stage.layerName, { type: 'built', tag: cur.name }, stage)
  stage.layers.push(next)
  stage.effectful = false
  return next
}

/** Docker pulls from a registry on this machine over plain http; stacker needs `insecure: true`. */
export function isLoopbackRegistry(ref: Template): boolean {
  const first = ref[0]
  if (typeof first !== 'string') return false
  const slash = first.indexOf('/')
  if (slash < 0) return false
  const host = first.slice(0, slash)
  const name = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : (host.split(':')[0] ?? '')
  return name === 'localhost' || name === '[::1]' || /^127(?:\.\d{1,3}){3}$/.test(name)
}
