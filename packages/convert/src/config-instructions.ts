import { posix } from 'node:path'
import { argumentText, argumentWords, execForm, type Instr, pairs } from './dockerfile.js'
import { expand, expandText, platformArg } from './expand.js'
import { PLATFORM_ARGS, type Stage } from './model.js'
import { addStep, type ConvertState, isRoot, stepContext } from './state.js'
import { type ArgRef, argsOf, concat, isLiteral, splitWords, type Template, textOf } from './words.js'

// The instructions that set what later ones see or what the image's config says: ARG, ENV, LABEL,
// MAINTAINER, WORKDIR, USER, VOLUME, EXPOSE, SHELL, CMD and ENTRYPOINT.

export function argInstruction(st: ConvertState, instr: Instr): void {
  const stage = st.stages[st.stages.length - 1]
  for (const word of splitWords(argumentText(instr), st.escape)) {
    const eq = word.indexOf('=')
    const name = eq < 0 ? word : word.slice(0, eq)
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) st.fail(`invalid build argument name ${JSON.stringify(name)}`)
    let def: string | undefined
    if (eq >= 0) def = argDefault(st, word.slice(eq + 1), stage, name)
    else if (stage) def = st.globalArgs.get(name)?.def
    if (PLATFORM_ARGS.includes(name) && eq < 0) def = platformArg(st, name, stage)
    const ref: ArgRef = { arg: name, def }
    if (stage) stage.args.set(name, ref)
    else st.globalArgs.set(name, ref)
    if (!PLATFORM_ARGS.includes(name)) {
      if (!st.argDefaults.has(name)) {
        st.argDefaults.set(name, new Set())
        st.argOrder.push(name)
      }
      st.argDefaults.get(name)?.add(def)
    }
  }
}

function argDefault(st: ConvertState, raw: string, stage: Stage | undefined, name: string): string {
  const t = expand(st, raw, stage, `ARG ${name}`)
  const refs = argsOf(t).filter((a) => !PLATFORM_ARGS.includes(a))
  if (refs.length)
    st.warn(
      `ARG ${name}: its default refers to ${refs.join(', ')}, whose default is written in; --substitute ${refs[0]}=... does not change ${name}`,
    )
  return textOf(t)
}

/** The pairs of ENV or LABEL, names expanded. */
function namedPairs(st: ConvertState, instr: Instr, stage: Stage): Array<{ name: string; raw: string }> {
  let list: Array<{ name: string; raw: string }>
  try {
    list = pairs(instr, st.escape)
  } catch (e) {
    st.fail((e as Error).message)
  }
  return list.map((p) => ({ name: expandText(st, p.name, stage, `${instr.keyword} ${p.name}`), raw: p.raw }))
}

export function envInstruction(st: ConvertState, instr: Instr): void {
  const stage = st.stage
  for (const { name, raw } of namedPairs(st, instr, stage)) {
    const value = expand(st, raw, stage, `ENV ${name}`)
    const i = stage.env.findIndex(([k]) => k === name)
    if (i >= 0) stage.env[i] = [name, value]
    else stage.env.push([name, value])
  }
}

export function labelInstruction(st: ConvertState, instr: Instr): void {
  const stage = st.stage
  for (const { name, raw } of namedPairs(st, instr, stage)) {
    const value = expand(st, raw, stage, `LABEL ${name}`)
    const i = stage.labels.findIndex(([k]) => k === name)
    if (i >= 0) stage.labels[i] = [name, value]
    else stage.labels.push([name, value])
  }
}

export function maintainerInstruction(st: ConvertState, instr: Instr): void {
  const stage = st.stage
  const key = 'org.opencontainers.image.authors'
  const i = stage.annotations.findIndex(([k]) => k === key)
  const v = argumentText(instr)
  if (i >= 0) stage.annotations[i] = [key, v]
  else stage.annotations.push([key, v])
  st.warn(
    `MAINTAINER is written as the annotation ${key}, as upstream's convert does; Docker sets the config's author, which stacker sets itself`,
  )
}

export function workdirInstruction(st: ConvertState, instr: Instr): void {
  const stage = st.stage
  const raw = argumentText(instr)
  const t = expand(st, raw, stage, `WORKDIR ${raw}`)
  const text = textOf(t)
  let dir: Template
  if (text.startsWith('/')) dir = isLiteral(t) ? [posix.normalize(text)] : t
  else if (isLiteral(t) && isLiteral(stage.workdir)) dir = [posix.join(textOf(stage.workdir), text)]
  else dir = concat(stage.workdir, textOf(stage.workdir).endsWith('/') ? '' : '/', t)
  stage.workdir = dir
  stage.workdirSet = true
  const dirText = textOf(dir)
  stage.knownDirs.add(dirText)
  if (dirText !== '/') {
    stage.workdirLines.push({ line: instr.line, dir: dirText })
    addStep(
      stage,
      { note: `${st.o.file}:${instr.line}: WORKDIR`, argv: [], ctx: stepContext(stage), mkdirAs: dir },
      // Made as root, the directory is the same whenever it is made; made for a USER, a COPY into
      // it afterwards must find it already owned by that user.
      !isRoot(stage.user),
    )
  }
}

export function userInstruction(st: ConvertState, instr: Instr): void {
  const stage = st.stage
  const words = argumentWords(instr)
  if (words.length !== 1) st.fail('USER requires exactly one argument')
  stage.user = expand(st, words[0] as string, stage, `USER ${words[0]}`)
}

export function volumeInstruction(st: ConvertState, instr: Instr): void {
  const stage = st.stage
  const words = execForm(instr) ?? argumentWords(instr)
  for (const w of words) {
    const t = expand(st, w, stage, `VOLUME ${w}`)
    if (textOf(t) === '') st.fail('VOLUME specified can not be an empty string')
    if (!stage.volumes.some((v) => textOf(v) === textOf(t))) stage.volumes.push(t)
  }
}

/** EXPOSE 80 8000-8001/udp: `exposed_ports` 80/tcp, 8000/udp, 8001/udp, as Docker records them. A
 *  port from an ARG stays a substitution, checked when the stacker.yaml is read. */
export function exposeInstruction(st: ConvertState, instr: Instr): void {
  const stage = st.stage
  const add = (t: Template) => {
    if (!stage.exposedPorts.some((p) => textOf(p) === textOf(t))) stage.exposedPorts.push(t)
  }
  for (const w of argumentWords(instr)) {
    const t = expand(st, w, stage, `EXPOSE ${w}`)
    if (!isLiteral(t)) {
      add(t)
      continue
    }
    const m = /^([0-9]+)(?:-([0-9]+))?(?:\/([a-zA-Z]+))?$/.exec(textOf(t))
    const proto = (m?.[3] ?? 'tcp').toLowerCase()
    const from = Number(m?.[1])
    const to = m?.[2] === undefined ? from : Number(m[2])
    if (!m || from < 1 || to > 65535 || to < from || !['tcp', 'udp', 'sctp'].includes(proto))
      st.fail(`invalid port ${JSON.stringify(textOf(t))} in EXPOSE`)
    for (let port = from; port <= to; port++) add([`${port}/${proto}`])
  }
}

export function shellInstruction(st: ConvertState, instr: Instr): void {
  const stage = st.stage
  const exec = execForm(instr)
  if (!exec || exec.length === 0) st.fail('SHELL requires the arguments to be in JSON form')
  stage.shell = exec
}

/** CMD and ENTRYPOINT; an ENTRYPOINT drops an inherited CMD, as in Docker. */
export function commandInstruction(st: ConvertState, instr: Instr): void {
  const stage = st.stage
  const argv = execForm(instr) ?? [...stage.shell, argumentText(instr)]
  if (instr.keyword === 'CMD') {
    stage.cmd = argv
    stage.cmdSet = true
  } else {
    stage.entrypoint = argv
    if (!stage.cmdSet) stage.cmd = null
  }
}
