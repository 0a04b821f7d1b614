import { DEFAULT_PATH, IMAGE_DEFAULT, type LayerConfig, type LayerOut, type Stage } from './model.js'
import { renderStep, stepArgs, USER_FUNCTIONS } from './shell.js'
import { type ConvertState, currentLayer } from './state.js'
import type { ArgRef, Template } from './words.js'
import { IMAGE_LAYER } from './yaml-out.js'

/** Ends a stage: drops WORKDIR steps a chain without RUN cannot run, and renders its layers'
 *  `build_env` and `run`. */
export function finishStage(st: ConvertState, stage: Stage): void {
  // WORKDIR directories are made by the shell; a chain without RUN may have none (distroless).
  if (!stage.hasRun) {
    for (const l of stage.layers) {
      const kept = l.steps.filter((s) => s.mkdirAs === undefined)
      l.scopes = l.scopes.filter((_, i) => l.steps[i]?.mkdirAs === undefined)
      l.steps = kept
    }
    for (const w of stage.workdirLines) {
      if (!stage.importDests.includes(w.dir))
        st.warn(
          `WORKDIR ${w.dir}: the directory is not created (the stage has no RUN step to make it with; it exists only if the base image or a COPY makes it)`,
          w.line,
        )
    }
  }
  for (const l of stage.layers) finishLayer(st, l)
  if (stage.externalRef !== undefined && stage.layers.some((l) => l.steps.some((s) => s.mkdirAs === undefined)))
    st.warn(
      `FROM ${stage.externalRef}: RUN steps see only the Dockerfile's ENV, ARG, WORKDIR and USER; the base image's own Env, WorkingDir and User, which Docker applies to RUN, are not seen (PATH is ${DEFAULT_PATH})`,
      stage.line,
    )
}

function finishLayer(st: ConvertState, l: LayerOut): void {
  const runSteps = l.steps.filter((s) => s.mkdirAs === undefined)
  const argNames = new Set(l.scopes.flatMap((scope) => [...scope.keys()]))
  // An ENV with one value at every step goes into build_env, which keeps the steps short; one that
  // changes between steps (or is empty, which build_env drops) is exported by each step.
  const hoisted = new Map<string, Template>()
  for (const [k, v] of runSteps[0]?.ctx.env ?? []) {
    if (argNames.has(k) || v.length === 0) continue
    const same = runSteps.every((s) => {
      const e = s.ctx.env.find(([n]) => n === k)
      return e !== undefined && JSON.stringify(e[1]) === JSON.stringify(v)
    })
    if (same) hoisted.set(k, v)
  }
  l.steps = l.steps.map((step) => ({
    ...step,
    ctx: { ...step.ctx, env: step.ctx.env.filter(([k]) => !hoisted.has(k)) },
  }))
  const args = new Map<string, ArgRef>()
  l.steps.forEach((step, i) => {
    const scope = l.scopes[i] ?? new Map<string, ArgRef>()
    for (const [name, ref] of scope) {
      const have = args.get(name)
      if (have && have.def !== ref.def)
        st.warn(`ARG ${name} is declared again with another default: RUN steps of layer ${l.name} see the first`)
      else if (!have) args.set(name, ref)
    }
    for (const ref of stepArgs(step)) if (!args.has(ref.arg)) args.set(ref.arg, ref)
  })
  l.buildEnv = [...[...args].map(([k, v]): [string, Template] => [k, [v]]), ...hoisted]
  l.steps = l.steps.map((step, i) => {
    const scope = l.scopes[i] ?? new Map<string, ArgRef>()
    const unset = [...args.keys()].filter((k) => !scope.has(k))
    return { ...step, ctx: { ...step.ctx, unset } }
  })
  const needsUser = l.steps.some((s) => s.ctx.user !== undefined)
  l.run = l.steps.length ? [...(needsUser ? [USER_FUNCTIONS] : []), ...l.steps.map(renderStep)] : []
}

/** Makes the last stage the image: its top layer is not build_only, carries the config and is named
 *  by the IMAGE substitution. Warns about stages the image does not use. */
export function finishLast(st: ConvertState, last: Stage): void {
  for (const s of st.stages)
    if (s !== last && !s.used)
      st.warn(
        `stage ${s.name ?? s.index} is not used by the last stage: Docker skips it, stacker builds it (as a build_only layer)`,
        s.line,
      )
  const top = currentLayer(last)
  top.buildOnly = false
  top.config = layerConfig(last)
  // The image's layer is named by the IMAGE substitution, its own earlier layers after it.
  const renamed = new Map(
    last.layers.map((l, i) => [l.name, l === top ? IMAGE_LAYER : `${IMAGE_LAYER}.${i + 1}`] as const),
  )
  for (const l of last.layers) {
    l.name = renamed.get(l.name) ?? l.name
    if (l.from.type === 'built') l.from.tag = renamed.get(l.from.tag) ?? l.from.tag
  }
}

function layerConfig(stage: Stage): LayerConfig {
  const c: LayerConfig = {
    environment: stage.env,
    labels: stage.labels,
    annotations: stage.annotations,
    volumes: stage.volumes,
    exposedPorts: stage.exposedPorts,
  }
  if (stage.workdirSet) c.workingDir = stage.workdir
  if (stage.user !== undefined) c.runtimeUser = stage.user
  if (stage.entrypoint !== undefined) c.entrypoint = stage.entrypoint
  if (stage.cmd) c.cmd = stage.cmd
  return c
}

/** IMAGE's default: `app`, unless another layer is already called that. */
export function imageDefault(layers: readonly LayerOut[]): string {
  const names = new Set(layers.map((l) => l.name))
  let name = IMAGE_DEFAULT
  for (let i = 2; names.has(name); i++) name = `${IMAGE_DEFAULT}-${i}`
  return name
}
