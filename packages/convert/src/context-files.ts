import { open, readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'

// What COPY and ADD need to know about files of the build context.

/** The tar option that reads a file Docker's ADD extracts ('' for plain tar, `-z` gzip, `-j` bzip2,
 *  `-J` xz), or undefined when the file is not such an archive. */
export async function archiveKind(file: string): Promise<string | undefined> {
  const fh = await open(file, 'r')
  try {
    const buf = Buffer.alloc(512)
    const { bytesRead } = await fh.read(buf, 0, 512, 0)
    const b = buf.subarray(0, bytesRead)
    if (b[0] === 0x1f && b[1] === 0x8b) return '-z'
    if (b.subarray(0, 3).toString('latin1') === 'BZh') return '-j'
    if (b.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return '-J'
    return bytesRead >= 262 && b.subarray(257, 262).toString('latin1') === 'ustar' ? '' : undefined
  } finally {
    await fh.close()
  }
}

/** Paths in the context matching a wildcard path (Go's filepath.Match per segment), sorted. */
export async function globContext(root: string, pattern: string): Promise<string[]> {
  const segs = pattern.split('/').filter((s) => s !== '' && s !== '.')
  let paths = ['']
  for (const seg of segs) {
    const next: string[] = []
    for (const p of paths) {
      if (!/[*?[]/.test(seg)) {
        next.push(p ? `${p}/${seg}` : seg)
        continue
      }
      let entries: string[]
      try {
        entries = await readdir(join(root, p))
      } catch {
        continue
      }
      const re = globSegment(seg)
      for (const e of entries.sort()) if (re.test(e)) next.push(p ? `${p}/${e}` : e)
    }
    paths = next
  }
  const out: string[] = []
  for (const p of paths) {
    try {
      await stat(join(root, p))
      out.push(p)
    } catch {
      // A literal segment after a wildcard names nothing in this match.
    }
  }
  return out
}

function globSegment(seg: string): RegExp {
  let re = '^'
  for (let i = 0; i < seg.length; i++) {
    const c = seg[i] as string
    if (c === '*') re += '[^/]*'
    else if (c === '?') re += '[^/]'
    else if (c === '\\' && i + 1 < seg.length) re += `\\${seg[++i]}`
    else if (c === '[') {
      const end = seg.indexOf(']', i + 1)
      if (end < 0) re += '\\['
      else {
        const body = seg
          .slice(i + 1, end)
          .replace(/^\^/, '^')
          .replace(/\\/g, '\\\\')
        re += `[${body.startsWith('^') ? body : body}]`
        i = end
      }
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&')
  }
  return new RegExp(`${re}$`, 's')
}
