import { createHash } from 'node:crypto'
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { changedPaths, HashCache, hashTree } from '../src/hashing.js'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stacker-hashing-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

const sha = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

/** The tree digest as documented on hashTree, worked out here with a plain recursive walk. */
function expectedDigest(root: string): string {
  const lines: string[] = []
  const walk = (abs: string, rel: string): void => {
    const st = lstatSync(abs)
    const meta = `${st.mode.toString(8)} ${st.uid}:${st.gid}`
    const path = rel || '.'
    if (st.isDirectory()) {
      lines.push(`${path}\0d ${meta}`)
      for (const n of readdirSync(abs).sort()) walk(join(abs, n), rel ? `${rel}/${n}` : n)
    } else if (st.isSymbolicLink()) lines.push(`${path}\0l ${meta} ${readlinkSync(abs)}`)
    else lines.push(`${path}\0f ${meta} ${sha(readFileSync(abs))}`)
  }
  walk(root, '')
  return sha(lines.join('\n'))
}

/** Many small files, a few big ones (hashed off the main thread) and a symlink. */
async function makeTree(root: string): Promise<void> {
  for (let d = 0; d < 6; d++) {
    await mkdir(join(root, `d${d}`), { recursive: true })
    for (let f = 0; f < 150; f++)
      await writeFile(join(root, `d${d}`, `f${f}`), `${d}/${f} `.repeat(1 + ((d * 151 + f * 97) % 5000)))
  }
  for (let b = 0; b < 3; b++) await writeFile(join(root, `big${b}`), Buffer.alloc((2 << 20) + b, b + 1))
  await writeFile(join(root, 'empty'), '')
  await symlink('d0/f0', join(root, 'link'))
}

describe('hashTree', () => {
  it('hashes every file of a tree (big ones on a worker thread) as one walk would, cached or not', async () => {
    const root = join(dir, 'tree')
    await makeTree(root)
    const cache = await HashCache.open(join(dir, 'hash-cache.json'))
    const cold = await hashTree(root, cache)
    expect(cold.entries).toHaveLength(1 + 6 + 900 + 3 + 1 + 1)
    expect(cold.digest).toBe(expectedDigest(root))
    // From the cache, in this process and in the next.
    expect((await hashTree(root, cache)).digest).toBe(cold.digest)
    await cache.save()
    expect((await hashTree(root, await HashCache.open(join(dir, 'hash-cache.json')))).digest).toBe(cold.digest)
  })

  it('sees a change to any one file, small or big', async () => {
    const root = join(dir, 'tree')
    await makeTree(root)
    const cache = await HashCache.open(join(dir, 'hash-cache.json'))
    const before = await hashTree(root, cache)
    for (const rel of ['d0/f0', 'd2/f75', 'd5/f149', 'big1']) {
      const old = readFileSync(join(root, rel))
      await writeFile(join(root, rel), Buffer.concat([old.subarray(0, old.length - 1), Buffer.from('!')]))
      const after = await hashTree(root, cache)
      expect(changedPaths(before.entries, after.entries)).toEqual([rel])
      expect(after.digest).toBe(expectedDigest(root))
      await writeFile(join(root, rel), old)
    }
  })

  it('fails with the error of the read that failed', async () => {
    const cache = await HashCache.open(join(dir, 'hash-cache.json'))
    await expect(hashTree(join(dir, 'missing'), cache)).rejects.toMatchObject({ code: 'ENOENT' })
  })
})
