import { readFile, rename, rm, writeFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { type Logger, StackerError } from '@stacker/core'
import { type Conversion, convertDockerfile } from './convert.js'

export {
  type Conversion,
  type ConversionWarning,
  type ConvertOptions,
  convertDockerfile,
  IMAGE_DEFAULT,
  IMAGE_KEY,
} from './convert.js'
// The core types this package's API takes and throws, so a user needs no second import.
export { isStackerError, StackerError } from '@stacker/core'
export type { LogFields, Logger, LogLevel, StackerErrorCode } from '@stacker/core'

/** Options of convertFiles. */
export interface ConvertFilesOptions {
  /** The Dockerfile; its directory is the build context. */
  dockerFile: string
  /** The stackerfile to write. */
  outputFile: string
  /** The substitutions file to write. */
  substituteFile: string
  /** Each warning is one line: `<Dockerfile>:<line>: <what was not converted, or how>`. */
  logger: Logger
}

/**
 * `stacker convert`: converts `dockerFile` and writes the stackerfile and the substitutions file
 * (each replaced atomically, so a failed conversion leaves earlier ones intact). Warnings go to the
 * logger. Throws StackerError DOCKERFILE for an invalid Dockerfile, USAGE when it cannot be read.
 */
export async function convertFiles(opts: ConvertFilesOptions): Promise<Conversion> {
  let text: string
  try {
    text = await readFile(opts.dockerFile, 'utf8')
  } catch (e) {
    throw new StackerError('USAGE', `couldn't read Dockerfile ${opts.dockerFile}: ${(e as Error).message}`, {
      cause: e,
    })
  }
  const out = resolve(opts.outputFile)
  const result = await convertDockerfile({
    text,
    file: opts.dockerFile,
    contextDir: dirname(resolve(opts.dockerFile)),
    outputDir: dirname(out),
  })
  for (const w of result.warnings)
    opts.logger.warn(w.line > 0 ? `${opts.dockerFile}:${w.line}: ${w.message}` : `${opts.dockerFile}: ${w.message}`)
  await writeAtomically(out, result.stackerYaml)
  await writeAtomically(resolve(opts.substituteFile), result.substitutions)
  opts.logger.info(`wrote ${opts.outputFile} and ${opts.substituteFile}`)
  return result
}

async function writeAtomically(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`
  try {
    await writeFile(tmp, text)
    await rename(tmp, file)
  } finally {
    await rm(tmp, { force: true })
  }
}
