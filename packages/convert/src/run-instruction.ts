import { argumentText, execForm, flagsOf, hasHeredocs, type Instr } from './dockerfile.js'
import type { Stage } from './model.js'
import type { Step } from './shell.js'
import { addStep, type ConvertState, stepContext } from './state.js'

/** RUN: one step of the current layer, in shell form (through SHELL), exec form or a here-document. */
export function runInstruction(st: ConvertState, instr: Instr): void {
  const stage = st.stage
  for (const f of flagsOf(instr)) runFlag(st, f.name, f.value ?? '')
  const exec = execForm(instr)
  const note = `${st.o.file}:${instr.line}: RUN`
  let step: Step
  if (exec) {
    if (exec.length === 0) st.fail('RUN requires at least one argument')
    step = { note, argv: exec, ctx: stepContext(stage) }
  } else {
    const text = argumentText(instr)
    if (text.trim() === '') st.fail('RUN requires at least one argument')
    step = hasHeredocs(instr) ? heredocStep(stage, text, note) : shellStep(stage, text, note)
  }
  addStep(stage, step, true)
}

function shellStep(stage: Stage, cmd: string, note: string): Step {
  return { note, argv: [...stage.shell, cmd], ctx: stepContext(stage) }
}

function heredocStep(stage: Stage, text: string, note: string): Step {
  const lines = text.split('\n')
  const m = /^<<(-?)(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_.-]+))$/.exec((lines[0] ?? '').trim())
  // A here-document after a command (`cat <<EOF > f`) is shell syntax: the shell reads it.
  if (!m) return shellStep(stage, text, note)
  const chomp = m[1] === '-'
  const delim = m[2] ?? m[3] ?? m[4] ?? ''
  const body: string[] = []
  for (const l of lines.slice(1)) {
    const line = chomp ? l.replace(/^\t+/, '') : l
    if (line === delim) break
    body.push(line)
  }
  const data = body.length ? `${body.join('\n')}\n` : ''
  // A lone here-document is the script: run by its #! line if it has one, else by the shell.
  if (data.startsWith('#!')) return { note, argv: [], script: data, ctx: stepContext(stage) }
  return shellStep(stage, data, note)
}

function runFlag(st: ConvertState, name: string, value: string): void {
  if (name === 'mount') {
    const type = /(?:^|,)type=([^,]*)/.exec(value)?.[1] ?? 'bind'
    if (type === 'cache') st.warn(`RUN --mount=${value}: stacker has no cache mounts; the step runs without the cache`)
    else if (type === 'secret' || type === 'ssh')
      st.warn(`RUN --mount=${value}: stacker has no ${type} mounts; the step runs without it`)
    else st.warn(`RUN --mount=${value}: this mount is not converted; the step runs without it`)
  } else if (name === 'network') {
    if (value !== 'default')
      st.warn(`RUN --network=${value}: stacker runs build steps with the host network; the option is dropped`)
  } else st.warn(`RUN --${name}=${value} is not converted`)
}
