import { spawn } from 'node:child_process'
import { pipeline, Readable, type Transform, type Writable } from 'node:stream'
import { onCleanup, StackerError } from '@stacker/core'

/** The stream compression of a tar layer blob. */
export type Compression = 'gzip' | 'zstd' | 'none'

/** Normalises the accepted input shapes to one async iterable of byte chunks. */
export async function* toChunks(
  input: AsyncIterable<Uint8Array> | Iterable<Uint8Array> | NodeJS.ReadableStream,
): AsyncGenerator<Buffer> {
  for await (const c of input as AsyncIterable<Uint8Array | string>) {
    if (typeof c === 'string') throw new TypeError('layer input must be a byte stream, not a text stream')
    yield Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength)
  }
}

/** Re-cuts a stream into fixed-size chunks (the last one shorter), so a compressor sees the same
 *  sequence of writes whatever the file read sizes were: part of what makes output reproducible.
 *  A source chunk that is already exactly one chunk long is passed on uncopied, so the source must
 *  not reuse the buffers it yields. */
export async function* rechunk(source: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Buffer> {
  let buf = Buffer.allocUnsafe(size)
  let fill = 0
  for await (const chunk of source) {
    if (fill === 0 && chunk.byteLength === size) {
      yield Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)
      continue
    }
    let off = 0
    while (off < chunk.byteLength) {
      const n = Math.min(size - fill, chunk.byteLength - off)
      buf.set(chunk.subarray(off, off + n), fill)
      fill += n
      off += n
      if (fill === size) {
        yield buf
        buf = Buffer.allocUnsafe(size)
        fill = 0
      }
    }
  }
  if (fill > 0) yield buf.subarray(0, fill)
}

/** Runs a source through a Node transform (zlib). Errors on either side surface from the
 *  iteration; stopping the iteration early tears down the transform and the source. */
export function throughTransform(source: AsyncIterable<Uint8Array>, t: Transform): AsyncIterable<Buffer> {
  return pipeline(Readable.from(source, { objectMode: false }), t, () => {}) as unknown as AsyncIterable<Buffer>
}

function waitDrain(w: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    if (w.destroyed || w.writableEnded) {
      reject(new Error('pipe closed'))
      return
    }
    const done = (err?: Error) => {
      w.off('drain', onDrain)
      w.off('error', onError)
      w.off('close', onClose)
      if (err) reject(err)
      else resolve()
    }
    const onDrain = () => done()
    const onError = (e: Error) => done(e)
    const onClose = () => done(new Error('pipe closed'))
    w.on('drain', onDrain)
    w.on('error', onError)
    w.on('close', onClose)
  })
}

/** Runs a source through an external filter program (stdin -> stdout). The child is killed when
 *  the iteration stops early or fails, and on process cleanup while it runs. A non-zero exit
 *  becomes an error carrying the program's stderr. */
export async function* throughProgram(
  cmd: string,
  args: readonly string[],
  source: AsyncIterable<Uint8Array>,
  errorCode: 'LAYER' | 'EXTRACT',
): AsyncGenerator<Buffer> {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] })
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
  const unregister = onCleanup(kill)
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString()
  })
  child.stdin.on('error', () => {}) // EPIPE when the child dies first; its exit status tells why
  const exited = new Promise<number | null>((resolve, reject) => {
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(
        e.code === 'ENOENT'
          ? new StackerError('TOOL_MISSING', `${cmd} not found in PATH`, { cause: e })
          : new StackerError(errorCode, `${cmd}: ${e.message}`, { cause: e }),
      )
    })
    child.on('close', (code) => resolve(code))
  })
  exited.catch(() => {})
  let feedingFailed = false
  const feeding = (async () => {
    try {
      for await (const c of source) {
        if (!child.stdin.write(c)) await waitDrain(child.stdin)
      }
      child.stdin.end()
    } catch (e) {
      feedingFailed = true
      kill()
      throw e
    }
  })()
  feeding.catch(() => {})
  try {
    for await (const c of child.stdout as AsyncIterable<Buffer>) yield c
    const code = await exited
    if (feedingFailed) await feeding
    if (code !== 0) {
      throw new StackerError(errorCode, `${cmd} failed (exit ${code}): ${stderr.trim().split('\n').pop() ?? ''}`)
    }
    await feeding
  } finally {
    kill()
    unregister()
  }
}

export type DetectedCompression = 'gzip' | 'zstd' | 'none'

/** Looks at the first bytes without consuming them: 1f 8b is gzip, 28 b5 2f fd is zstd. */
export async function sniffCompression(
  source: AsyncIterable<Buffer>,
): Promise<{ kind: DetectedCompression; stream: AsyncIterable<Buffer> }> {
  const it = source[Symbol.asyncIterator]()
  const head: Buffer[] = []
  let len = 0
  let done = false
  while (len < 4) {
    const r = await it.next()
    if (r.done) {
      done = true
      break
    }
    head.push(r.value)
    len += r.value.length
  }
  const h = Buffer.concat(head)
  let kind: DetectedCompression = 'none'
  if (h[0] === 0x1f && h[1] === 0x8b) kind = 'gzip'
  else if (h[0] === 0x28 && h[1] === 0xb5 && h[2] === 0x2f && h[3] === 0xfd) kind = 'zstd'
  async function* replay(): AsyncGenerator<Buffer> {
    try {
      if (h.length > 0) yield h
      if (done) return
      for (;;) {
        const r = await it.next()
        if (r.done) return
        yield r.value
      }
    } finally {
      if (!done) await it.return?.()
    }
  }
  return { kind, stream: replay() }
}
