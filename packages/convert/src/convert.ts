import { StackerError } from '@stacker/core'
import {
  argInstruction,
  commandInstruction,
  envInstruction,
  exposeInstruction,
  labelInstruction,
  maintainerInstruction,
  shellInstruction,
  userInstruction,
  volumeInstruction,
  workdirInstruction,
} from './config-instructions.js'
import { copyInstruction } from './copy.js'
import { argumentText, type Instr, parseDockerfile } from './dockerfile.js'
import { finishLast, finishStage, imageDefault } from './finish.js'
import { BUILTIN_SUBSTITUTIONS, type Conversion, type ConvertOptions, IMAGE_KEY } from './model.js'
import { runInstruction } from './run-instruction.js'
import { fromInstruction } from './stages.js'
import { ConvertState } from './state.js'
import { DOLLAR_SENTINEL, renderOutput } from './yaml-out.js'

// The conversion: instructions in order, each handled by the module of its concern (stages.ts: FROM;
// config-instructions.ts: ARG, ENV, LABEL, WORKDIR, USER, ...; run-instruction.ts: RUN; copy.ts:
// COPY and ADD), then finish.ts ends the stages and yaml-out.ts writes the files.

export {
  type Conversion,
  type ConversionWarning,
  type ConvertOptions,
  IMAGE_DEFAULT,
  IMAGE_KEY,
} from './model.js'

/**
 * Converts a Dockerfile into a stackerfile and its substitutions. Reads the build context (to tell
 * files from directories, expand wildcards and recognise archives) but writes nothing. Throws
 * StackerError DOCKERFILE with `<file>:<line>: <message>` for a Dockerfile Docker would reject.
 */
export async function convertDockerfile(opts: ConvertOptions): Promise<Conversion> {
  if (opts.text.includes(DOLLAR_SENTINEL))
    throw new StackerError('DOCKERFILE', `${opts.file}: contains U+E024, which the conversion cannot write`)
  const st: ConvertState = new ConvertState(opts)
  const parsed = parseDockerfile(opts.text, opts.file)
  st.escape = parsed.escape
  for (const instr of parsed.instructions) {
    st.line = instr.line
    await instruction(st, instr)
  }
  const last = st.stages[st.stages.length - 1]
  if (!last) st.fail('No source image provided with `FROM`', 1)
  finishStage(st, last)
  finishLast(st, last)
  const layers = [...st.extra, ...st.stages.flatMap((s) => s.layers)]
  // A build argument called IMAGE keeps its name; the image's name takes another.
  const imageKey = [IMAGE_KEY, `${IMAGE_KEY}_NAME`, `STACKER_${IMAGE_KEY}`].find((k) => !st.argOrder.includes(k))
  if (imageKey !== IMAGE_KEY)
    st.warn(`the Dockerfile has a build argument ${IMAGE_KEY}: the image's name is the substitution ${imageKey}`, 0)
  st.warnings.sort((a, b) => a.line - b.line)
  return {
    ...renderOutput({
      layers,
      imageKey: imageKey ?? IMAGE_KEY,
      imageDefault: imageDefault(layers),
      args: st.argOrder.map((name) => ({ name, defaults: [...(st.argDefaults.get(name) ?? [])] })),
      reserved: [imageKey ?? IMAGE_KEY, ...BUILTIN_SUBSTITUTIONS],
      warn: (m) => st.warn(m, 0),
    }),
    warnings: st.warnings,
  }
}

/** What each Dockerfile instruction does to the conversion. */
const INSTRUCTIONS: Record<string, (st: ConvertState, instr: Instr) => void | Promise<void>> = {
  FROM: fromInstruction,
  ARG: argInstruction,
  ENV: envInstruction,
  LABEL: labelInstruction,
  MAINTAINER: maintainerInstruction,
  RUN: runInstruction,
  COPY: copyInstruction,
  ADD: copyInstruction,
  WORKDIR: workdirInstruction,
  USER: userInstruction,
  VOLUME: volumeInstruction,
  EXPOSE: exposeInstruction,
  CMD: commandInstruction,
  ENTRYPOINT: commandInstruction,
  SHELL: shellInstruction,
  STOPSIGNAL: (st, instr) =>
    st.warn(`STOPSIGNAL ${argumentText(instr)} is not converted: stacker.yaml cannot set the image's stop signal`),
  HEALTHCHECK: (st) => st.warn('HEALTHCHECK is not converted: OCI images and stacker.yaml have no health check'),
  ONBUILD: (st, instr) => st.warn(`ONBUILD ${argumentText(instr)} is not converted: OCI images have no build triggers`),
}

async function instruction(st: ConvertState, instr: Instr): Promise<void> {
  if (instr.keyword !== 'FROM' && instr.keyword !== 'ARG' && st.stages.length === 0)
    st.fail(`${instr.keyword} must come after FROM`)
  const handler = Object.hasOwn(INSTRUCTIONS, instr.keyword) ? INSTRUCTIONS[instr.keyword] : undefined
  if (!handler) st.fail(`unknown instruction: ${instr.keyword}`)
  await handler(st, instr)
}
