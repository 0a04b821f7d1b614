import { createWriteStream, type WriteStream } from 'node:fs'
import { createLogger, type LogLevel, type LogRecord, type Logger, type ProgressEvent } from '@stacker/core'

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 }

export interface RendererOptions {
  debug: boolean
  quiet: boolean
  logFile?: string | undefined
  timestamps: boolean
  progress: boolean
}

/** Renders log records as upstream does: `<msg>[ key=value...]`, one per line, on stderr (or a file). */
export class Renderer {
  readonly logger: Logger
  readonly #opts: RendererOptions
  readonly #file: WriteStream | undefined
  readonly #progress = new Map<string, ProgressEvent>()
  #progressShown = false

  constructor(opts: RendererOptions) {
    this.#opts = opts
    this.#file = opts.logFile ? createWriteStream(opts.logFile, { flags: 'w' }) : undefined
    this.logger = createLogger(
      (r) => this.#write(r),
      (e) => this.#onProgress(e),
    )
  }

  #threshold(): number {
    if (this.#opts.quiet) return Number.POSITIVE_INFINITY
    return this.#opts.debug ? RANK.debug : RANK.info
  }

  #write(r: LogRecord): void {
    if (RANK[r.level] < this.#threshold()) return
    let line = r.prefix ? `${r.prefix}: ${r.msg}` : r.msg
    if (r.fields) {
      for (const [k, v] of Object.entries(r.fields)) if (v !== undefined) line += ` ${k}=${v}`
    }
    if (this.#opts.timestamps) line = `${new Date().toISOString()} ${line}`
    this.#clearProgress()
    this.#out(`${line}\n`)
  }

  #out(s: string): void {
    if (this.#file) this.#file.write(s)
    else process.stderr.write(s)
  }

  #onProgress(e: ProgressEvent): void {
    if (this.#opts.quiet) return
    if (!this.#opts.progress || this.#file) {
      // Plain mode: one line when a transfer finishes.
      if (e.done)
        this.#write({
          level: 'info',
          msg: `${progressVerb(e)} ${e.label}: ${humanBytes(e.current)} done`,
          fields: undefined,
          prefix: undefined,
        })
      return
    }
    if (e.done) this.#progress.delete(e.id)
    else this.#progress.set(e.id, e)
    this.#drawProgress()
  }

  #drawProgress(): void {
    this.#clearProgress()
    const lines = [...this.#progress.values()].slice(-6).map((e) => {
      const total = e.total ? ` / ${humanBytes(e.total)}` : ''
      return `${progressVerb(e)} ${e.label} ${humanBytes(e.current)}${total}`
    })
    if (lines.length) {
      process.stderr.write(`${lines.join('\n')}\n`)
      this.#progressShown = true
      this.#shownLines = lines.length
    }
  }

  #shownLines = 0
  #clearProgress(): void {
    if (!this.#progressShown) return
    process.stderr.write(`\x1b[${this.#shownLines}A\x1b[J`)
    this.#progressShown = false
    this.#shownLines = 0
  }

  async close(): Promise<void> {
    this.#clearProgress()
    const f = this.#file
    if (f) await new Promise<void>((resolve) => f.end(resolve))
  }
}

function progressVerb(e: ProgressEvent): string {
  switch (e.kind) {
    case 'pull':
      return 'Copying blob'
    case 'push':
      return 'Pushing blob'
    case 'layer':
      return 'Writing layer'
    case 'download':
      return 'Downloading'
    case 'extract':
      return 'Extracting'
  }
}

export function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return i === 0 ? `${v} ${units[i]}` : `${v.toFixed(1)} ${units[i]}`
}
