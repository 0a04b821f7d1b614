/** Libraries report through a Logger; only the CLI decides how to render it. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error'

/** Structured values attached to a log line (a digest, a layer name, a size). */
export type LogFields = Readonly<Record<string, string | number | boolean | undefined>>

/** How far a transfer or a long step has come; renderers draw it, loggers to files may drop it. */
export interface ProgressEvent {
  /** What is moving: a blob digest, a layer name, a file. Stable for the life of one transfer. */
  readonly id: string
  readonly kind: 'pull' | 'push' | 'layer' | 'download' | 'extract'
  readonly label: string
  readonly current: number
  /** Total bytes when known. */
  readonly total?: number
  readonly done?: boolean
}

/** Where a library's messages go. Libraries never print; the caller decides how to render. */
export interface Logger {
  log(level: LogLevel, msg: string, fields?: LogFields): void
  debug(msg: string, fields?: LogFields): void
  info(msg: string, fields?: LogFields): void
  warn(msg: string, fields?: LogFields): void
  error(msg: string, fields?: LogFields): void
  progress(e: ProgressEvent): void
  /** A logger whose lines carry a prefix (e.g. the layer name in parallel builds). */
  child(prefix: string): Logger
}

/** One log line as createLogger hands it to its sink. */
export interface LogRecord {
  readonly level: LogLevel
  readonly msg: string
  readonly fields: LogFields | undefined
  readonly prefix: string | undefined
}

/** A Logger that hands every record to `sink`. `onProgress` receives progress events. */
export function createLogger(
  sink: (r: LogRecord) => void,
  onProgress: (e: ProgressEvent) => void = () => {},
  prefix?: string,
): Logger {
  const log = (level: LogLevel, msg: string, fields?: LogFields) => sink({ level, msg, fields, prefix })
  return {
    log,
    debug: (m, f) => log('debug', m, f),
    info: (m, f) => log('info', m, f),
    warn: (m, f) => log('warn', m, f),
    error: (m, f) => log('error', m, f),
    progress: onProgress,
    child: (p) => createLogger(sink, onProgress, prefix ? `${prefix}/${p}` : p),
  }
}

/** A Logger that drops everything. */
export const silentLogger: Logger = createLogger(() => {})

/** A Logger that keeps records in memory, for tests. */
export function memoryLogger(): Logger & { records: LogRecord[]; lines(level?: LogLevel): string[] } {
  const records: LogRecord[] = []
  const base = createLogger((r) => records.push(r))
  return Object.assign(base, {
    records,
    lines: (level?: LogLevel) => records.filter((r) => !level || r.level === level).map((r) => r.msg),
  })
}
