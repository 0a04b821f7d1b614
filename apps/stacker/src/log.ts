import { createWriteStream, type WriteStream } from 'node:fs'
import {
  createLogger,
  type LogLevel,
  type LogRecord,
  type Logger,
  type ProgressEvent,
  formatBytes,
} from '@stacker/core'

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 }

export interface RendererOptions {
  debug: boolean
  quiet: boolean
  logFile?: string | undefined
  timestamps: boolean
  progress: boolean
}

/** Renders log records as upstream does: `<msg>[ key=value...]`, one per line, on stderr (or a file).
 *  Progress events become a live display (bytes, rate, one line per blob) when progress is on and
 *  stderr is a terminal, plain `Copying blob ...` lines when progress is on elsewhere, and nothing
 *  (debug lines only) when it is off. */
export class Renderer {
  readonly logger: Logger
  readonly #opts: RendererOptions
  readonly #file: WriteStream | undefined
  readonly #live: boolean
  readonly #transfers = new Map<string, Transfer>()
  #shownLines = 0
  #redrawTimer: NodeJS.Timeout | undefined

  constructor(opts: RendererOptions) {
    this.#opts = opts
    this.#file = opts.logFile ? createWriteStream(opts.logFile, { flags: 'w' }) : undefined
    this.#live = opts.progress && !this.#file && !!process.stderr.isTTY
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
    this.#drawProgress()
  }

  #out(s: string): void {
    if (this.#file) this.#file.write(s)
    else process.stderr.write(s)
  }

  #onProgress(e: ProgressEvent): void {
    if (this.#opts.quiet) return
    const now = performance.now()
    let t = this.#transfers.get(e.id)
    const first = t === undefined
    if (!t) {
      t = { event: e, start: now, startBytes: e.current, last: now }
      this.#transfers.set(e.id, t)
    }
    t.event = e
    t.last = now
    if (e.done) this.#transfers.delete(e.id)
    const verb = progressVerb(e)
    if (!this.#opts.progress) {
      // Not in containers/image's words: scripts take `Copying blob` as a sign that progress is on.
      if (e.done) this.#write(record('debug', `${e.kind} ${e.label} done ${formatBytes(e.current)}`))
      return
    }
    if (!this.#live) {
      // Plain lines, as containers/image prints them when stderr is not a terminal.
      if (first) this.#write(record('info', `${verb} ${e.label}`))
      if (e.done) this.#write(record('info', `${verb} ${e.label} done ${summary(t)}`))
      return
    }
    if (e.done) {
      this.#write(record('info', `${verb} ${e.label} done ${summary(t)}`))
      return
    }
    // Redraw at most ten times a second: a fast local transfer sends many events.
    if (first) this.#redraw()
    else this.#redrawTimer ??= setTimeout(() => this.#redraw(), 100).unref()
  }

  #redraw(): void {
    if (this.#redrawTimer) clearTimeout(this.#redrawTimer)
    this.#redrawTimer = undefined
    this.#clearProgress()
    this.#drawProgress()
  }

  #drawProgress(): void {
    if (!this.#live || this.#shownLines > 0 || this.#transfers.size === 0) return
    const width = Math.max(20, (process.stderr.columns || 80) - 1)
    const shown = [...this.#transfers.values()].slice(-MAX_LIVE_LINES)
    // A wrapped line would throw off the cursor-up count used to erase the display.
    const lines = shown.map((t) => liveLine(t).slice(0, width))
    process.stderr.write(`${lines.join('\n')}\n`)
    this.#shownLines = lines.length
  }

  #clearProgress(): void {
    if (this.#shownLines === 0) return
    process.stderr.write(`\x1b[${this.#shownLines}A\x1b[J`)
    this.#shownLines = 0
  }

  async close(): Promise<void> {
    if (this.#redrawTimer) clearTimeout(this.#redrawTimer)
    this.#redrawTimer = undefined
    this.#clearProgress()
    this.#transfers.clear()
    const f = this.#file
    if (f) await new Promise<void>((resolve) => f.end(resolve))
  }
}

const MAX_LIVE_LINES = 8

interface Transfer {
  event: ProgressEvent
  /** When the first event arrived and how many bytes it already counted: the rate is measured from there. */
  start: number
  startBytes: number
  last: number
}

function record(level: LogLevel, msg: string): LogRecord {
  return { level, msg, fields: undefined, prefix: undefined }
}

/** Bytes per second since the first event, once there is something to measure. */
function rate(t: Transfer): number | undefined {
  const secs = (t.last - t.start) / 1000
  const bytes = t.event.current - t.startBytes
  return secs > 0.05 && bytes > 0 ? bytes / secs : undefined
}

function summary(t: Transfer): string {
  const r = rate(t)
  return r === undefined ? formatBytes(t.event.current) : `${formatBytes(t.event.current)} ${formatBytes(r)}/s`
}

function liveLine(t: Transfer): string {
  const e = t.event
  const r = rate(t)
  const speed = r === undefined ? '' : `  ${formatBytes(r)}/s`
  if (!e.total) return `${progressVerb(e)} ${e.label}  ${formatBytes(e.current)}${speed}`
  const frac = Math.min(1, e.current / e.total)
  const barWidth = 20
  const filled = Math.round(frac * barWidth)
  const bar = `[${'='.repeat(filled)}${' '.repeat(barWidth - filled)}]`
  // The bar goes last: on a narrow terminal it is what gets cut, not the numbers.
  return `${progressVerb(e)} ${e.label}  ${formatBytes(e.current)} / ${formatBytes(e.total)}${speed}  ${bar}`
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
