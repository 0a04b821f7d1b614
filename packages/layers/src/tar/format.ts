/** The tar wire format (POSIX ustar + PAX, reading GNU long names too), kept in-house because
 *  layers need binary-safe PAX values (`SCHILY.xattr.security.capability` is binary), exact control
 *  over every header byte for reproducible digests, and PAX for ids/sizes that do not fit octal. */

export const BLOCK = 512

export type TarEntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo'

export interface TarHeader {
  /** Relative path without a leading `/`; directories end in `/`. */
  name: string
  type: TarEntryType
  /** Permission bits including setuid/setgid/sticky (`& 0o7777`). */
  mode: number
  uid: number
  gid: number
  /** Body size; 0 for everything but regular files. */
  size: number
  /** Seconds since the epoch (may be fractional when read from PAX). */
  mtime: number
  linkname: string
  devmajor: number
  devminor: number
  /** Extended attributes, in the order they are to be written. */
  xattrs: ReadonlyArray<readonly [string, Buffer]>
}

const TYPEFLAGS: Readonly<Record<TarEntryType, number>> = {
  file: 0x30,
  link: 0x31,
  symlink: 0x32,
  char: 0x33,
  block: 0x34,
  dir: 0x35,
  fifo: 0x36,
}

const MAX_OCTAL_7 = 0o7777777
const MAX_OCTAL_11 = 0o77777777777
export const END_OF_ARCHIVE: Buffer = Buffer.alloc(2 * BLOCK)

function isPlainAscii(s: string): boolean {
  return /^[\x01-\x7f]*$/.test(s)
}

/** The name written in the fixed field when the real one travels in PAX: ASCII only, truncated. */
function fallbackName(s: string, max: number): string {
  return s.replace(/[^\x01-\x7f]/g, '').slice(0, max)
}

function writeString(buf: Buffer, off: number, len: number, s: string): void {
  buf.write(s, off, len, 'utf8')
}

function writeOctal(buf: Buffer, off: number, len: number, value: number): void {
  buf.write(value.toString(8).padStart(len - 1, '0'), off, len - 1, 'ascii')
  buf[off + len - 1] = 0
}

/** GNU base-256: for device numbers beyond octal range, which PAX has no key for. */
function writeBase256(buf: Buffer, off: number, len: number, value: number): void {
  let v = BigInt(value)
  for (let i = len - 1; i > 0; i--) {
    buf[off + i] = Number(v & 0xffn)
    v >>= 8n
  }
  buf[off] = 0x80
}

/** One PAX record `"<len> <key>=<value>\n"`, where len counts the whole record. */
export function paxRecord(key: string, value: string | Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), Buffer.from(value), Buffer.from('\n')])
  let len = body.length + 1
  while (String(len).length + body.length !== len) len = String(len).length + body.length
  return Buffer.concat([Buffer.from(String(len), 'ascii'), body])
}

function paxHeaderName(name: string): string {
  const trimmed = name.endsWith('/') ? name.slice(0, -1) : name
  const slash = trimmed.lastIndexOf('/')
  const dir = slash >= 0 ? trimmed.slice(0, slash + 1) : ''
  return fallbackName(`${dir}PaxHeaders.0/${trimmed.slice(slash + 1)}`, 100)
}

function encodeBlock(
  h: Pick<TarHeader, 'mode' | 'uid' | 'gid' | 'size' | 'mtime' | 'devmajor' | 'devminor'> & {
    name: string
    linkname: string
    typeflag: number
  },
): Buffer {
  const buf = Buffer.alloc(BLOCK)
  writeString(buf, 0, 100, h.name)
  writeOctal(buf, 100, 8, h.mode & 0o7777)
  writeOctal(buf, 108, 8, h.uid)
  writeOctal(buf, 116, 8, h.gid)
  writeOctal(buf, 124, 12, h.size)
  writeOctal(buf, 136, 12, h.mtime)
  buf.fill(0x20, 148, 156)
  buf[156] = h.typeflag
  writeString(buf, 157, 100, h.linkname)
  buf.write('ustar\x0000', 257, 8, 'ascii')
  // uname (265) and gname (297) stay empty: ids are numeric by design.
  if (h.devmajor > MAX_OCTAL_7) writeBase256(buf, 329, 8, h.devmajor)
  else writeOctal(buf, 329, 8, h.devmajor)
  if (h.devminor > MAX_OCTAL_7) writeBase256(buf, 337, 8, h.devminor)
  else writeOctal(buf, 337, 8, h.devminor)
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += buf[i] as number
  buf.write(sum.toString(8).padStart(6, '0'), 148, 6, 'ascii')
  buf[154] = 0
  buf[155] = 0x20
  return buf
}

export function padding(size: number): Buffer {
  const rem = size % BLOCK
  return rem === 0 ? Buffer.alloc(0) : Buffer.alloc(BLOCK - rem)
}

/** Encodes an entry's header blocks (a PAX extended header first when needed). The body, if any,
 *  follows, then `padding(size)`. Same header in, same bytes out. */
export function encodeHeader(h: TarHeader): Buffer {
  const records: Buffer[] = []
  let name = h.name
  let linkname = h.linkname
  if (Buffer.byteLength(name) > 100 || !isPlainAscii(name)) {
    records.push(paxRecord('path', name))
    name = fallbackName(name, 100)
  }
  if (Buffer.byteLength(linkname) > 100 || !isPlainAscii(linkname)) {
    records.push(paxRecord('linkpath', linkname))
    linkname = fallbackName(linkname, 100)
  }
  let { size, uid, gid, mtime } = h
  if (size > MAX_OCTAL_11) {
    records.push(paxRecord('size', String(size)))
    size = 0
  }
  if (uid > MAX_OCTAL_7) {
    records.push(paxRecord('uid', String(uid)))
    uid = 0
  }
  if (gid > MAX_OCTAL_7) {
    records.push(paxRecord('gid', String(gid)))
    gid = 0
  }
  if (mtime < 0 || mtime > MAX_OCTAL_11) {
    records.push(paxRecord('mtime', String(mtime)))
    mtime = 0
  }
  for (const [key, value] of h.xattrs) records.push(paxRecord(`SCHILY.xattr.${key}`, value))

  const main = encodeBlock({
    name,
    linkname,
    typeflag: TYPEFLAGS[h.type],
    mode: h.mode,
    uid,
    gid,
    size,
    mtime,
    devmajor: h.devmajor,
    devminor: h.devminor,
  })
  if (records.length === 0) return main
  const pax = Buffer.concat(records)
  const paxBlock = encodeBlock({
    name: paxHeaderName(h.name),
    linkname: '',
    typeflag: 0x78, // 'x'
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: pax.length,
    mtime: 0,
    devmajor: 0,
    devminor: 0,
  })
  return Buffer.concat([paxBlock, pax, padding(pax.length), main])
}

// ---------------------------------------------------------------------------------------------
// Decoding

export interface RawHeader {
  name: string
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number
  typeflag: string
  linkname: string
  devmajor: number
  devminor: number
}

function cString(buf: Buffer, off: number, len: number): string {
  const end = buf.indexOf(0, off)
  return buf.toString('utf8', off, end < 0 || end > off + len ? off + len : end)
}

/** Octal (space/NUL padded) or GNU base-256. Returns NaN on garbage. */
export function parseNumeric(buf: Buffer, off: number, len: number): number {
  const first = buf[off] ?? 0
  if (first & 0x80) {
    let v = 0n
    const negative = first === 0xff
    for (let i = 0; i < len; i++) {
      const b = i === 0 ? first & 0x7f : (buf[off + i] ?? 0)
      v = (v << 8n) | BigInt(negative ? ~b & 0xff : b)
    }
    return negative ? -Number(v) - 1 : Number(v)
  }
  const s = buf
    .toString('latin1', off, off + len)
    .replace(/\0.*$/s, '')
    .trim()
  if (s === '') return 0
  if (!/^[0-7]+$/.test(s)) return Number.NaN
  return Number.parseInt(s, 8)
}

export function isZeroBlock(buf: Buffer): boolean {
  for (const b of buf) if (b !== 0) return false
  return true
}

/** Parses one 512-byte header block. Throws with a plain message on a bad checksum or field. */
export function decodeBlock(buf: Buffer): RawHeader {
  let unsigned = 0
  let signed = 0
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : (buf[i] ?? 0)
    unsigned += b
    signed += b > 127 ? b - 256 : b
  }
  const stored = parseNumeric(buf, 148, 8)
  if (stored !== unsigned && stored !== signed) throw new Error('invalid tar header checksum (corrupt or not a tar)')
  const magic = buf.toString('latin1', 257, 263)
  let name = cString(buf, 0, 100)
  if (magic === 'ustar\0') {
    const prefix = cString(buf, 345, 155)
    if (prefix) name = `${prefix}/${name}`
  }
  const h: RawHeader = {
    name,
    mode: parseNumeric(buf, 100, 8),
    uid: parseNumeric(buf, 108, 8),
    gid: parseNumeric(buf, 116, 8),
    size: parseNumeric(buf, 124, 12),
    mtime: parseNumeric(buf, 136, 12),
    typeflag: String.fromCharCode(buf[156] ?? 0),
    linkname: cString(buf, 157, 100),
    devmajor: parseNumeric(buf, 329, 8),
    devminor: parseNumeric(buf, 337, 8),
  }
  for (const k of ['mode', 'uid', 'gid', 'size', 'mtime', 'devmajor', 'devminor'] as const) {
    if (Number.isNaN(h[k])) throw new Error(`invalid ${k} field in tar header of ${JSON.stringify(name)}`)
  }
  if (h.size < 0) throw new Error(`negative size in tar header of ${JSON.stringify(name)}`)
  return h
}

/** Parses PAX records in archive order (a key may repeat); values stay raw bytes (xattr values may
 *  be binary). */
export function decodePaxRecords(data: Buffer): Array<[string, Buffer]> {
  const out: Array<[string, Buffer]> = []
  let off = 0
  while (off < data.length) {
    if (data[off] === 0) break // some writers pad the record area with NULs
    const space = data.indexOf(0x20, off)
    if (space < 0) throw new Error('malformed PAX record')
    const len = Number.parseInt(data.toString('ascii', off, space), 10)
    if (!Number.isSafeInteger(len) || len <= space - off + 1 || off + len > data.length) {
      throw new Error('malformed PAX record length')
    }
    const rec = data.subarray(space + 1, off + len)
    if (rec[rec.length - 1] !== 0x0a) throw new Error('malformed PAX record (no newline)')
    const eq = rec.indexOf(0x3d)
    if (eq < 0) throw new Error('malformed PAX record (no "=")')
    out.push([rec.toString('utf8', 0, eq), Buffer.from(rec.subarray(eq + 1, rec.length - 1))])
    off += len
  }
  return out
}

/** Parses PAX records into a map; a repeated key keeps its last value. */
export function decodePax(data: Buffer): Map<string, Buffer> {
  return new Map(decodePaxRecords(data))
}
