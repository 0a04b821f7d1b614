import { hostGoArch, hostGoOs } from '@stacker/stackerfile'
import { dockerfileError } from './dockerfile.js'
import type { ConversionWarning, ConvertOptions, FromOut, LayerOut, Stage } from './model.js'
import type { Step, StepContext } from './shell.js'
import { type ArgRef, isLiteral, type Template, textOf } from './words.js'

/** What one conversion knows so far: the stages, the extra layers, the build arguments, the
 *  warnings. Each instruction's handler reads and extends it. */
export class ConvertState {
  readonly o: ConvertOptions
  readonly warnings: ConversionWarning[] = []
  readonly stages: Stage[] = []
  /** Layers that belong to no stage: images copied from, archives used as a tar base. */
  readonly extra: LayerOut[] = []
  readonly globalArgs = new Map<string, ArgRef>()
  /** Every declared build argument and the defaults it was declared with. */
  readonly argDefaults = new Map<string, Set<string | undefined>>()
  readonly argOrder: string[] = []
  readonly names = new Set<string>()
  escape = '\\'
  /** The line of the instruction being converted: where warnings and errors point by default. */
  line = 0
  readonly platform: { os: string; arch: string }
  dockerignoreWarned = false

  constructor(o: ConvertOptions) {
    this.o = o
    this.platform = { os: o.os ?? hostGoOs(), arch: o.arch ?? hostGoArch() }
  }

  warn(message: string, line = this.line): void {
    this.warnings.push({ line, message })
  }

  fail(message: string, line = this.line): never {
    throw dockerfileError(this.o.file, line, message)
  }

  /** The stage being converted; the dispatcher lets only FROM and ARG come before the first. */
  get stage(): Stage {
    return this.stages[this.stages.length - 1] as Stage
  }

  /** `want`, or `want-2`, `want-3`, ... when a layer already has that name. */
  uniqueName(want: string): string {
    let name = want
    for (let i = 2; this.names.has(name); i++) name = `${want}-${i}`
    this.names.add(name)
    return name
  }
}

export function newLayer(name: string, from: FromOut, stage: Stage): LayerOut {
  const l: LayerOut = { name, from, buildOnly: true, imports: [], steps: [], scopes: [], buildEnv: [], run: [] }
  if (stage.platform) {
    l.os = stage.platform.os
    l.arch = stage.platform.arch
  }
  return l
}

export function currentLayer(stage: Stage): LayerOut {
  return stage.layers[stage.layers.length - 1] as LayerOut
}

export function addStep(stage: Stage, step: Step, effectful: boolean): void {
  const layer = currentLayer(stage)
  layer.steps.push(step)
  layer.scopes.push(new Map(stage.args))
  if (effectful) stage.effectful = true
  if (step.mkdirAs === undefined) stage.hasRun = true
}

/** What a step added now runs with: the stage's ENV, WORKDIR and USER at this point. */
export function stepContext(stage: Stage): StepContext {
  return { env: [...stage.env], unset: [], cwd: stage.workdir, user: isRoot(stage.user) ? undefined : stage.user }
}

export function isRoot(user: Template | undefined): boolean {
  if (user === undefined) return true
  if (!isLiteral(user)) return false
  return ['', 'root', '0', 'root:root', '0:0', 'root:0', '0:root'].includes(textOf(user))
}
