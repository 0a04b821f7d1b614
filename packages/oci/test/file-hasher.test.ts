import { createHash } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { hashFileOffThread, openFileHasher } from '../src/file-hasher.js'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stacker-file-hasher-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

const sha = (b: Buffer | string, alg = 'sha256'): string => `${alg}:${createHash(alg).update(b).digest('hex')}`

describe('hashing on a worker thread', () => {
  it('gives the digest of a file, or of the part of it written so far, with either algorithm', async () => {
    const body = Buffer.alloc(3 << 20, 7)
    await writeFile(join(dir, 'f'), body)
    expect(await hashFileOffThread(join(dir, 'f'), body.length)).toBe(sha(body))
    expect(await hashFileOffThread(join(dir, 'f'), body.length, 'sha512')).toBe(sha(body, 'sha512'))
    const h = await openFileHasher(join(dir, 'f'), 'sha256')
    h.advance(1 << 20)
    expect(await h.finish(2 << 20)).toBe(sha(body.subarray(0, 2 << 20)))
  })

  it('fails when the file is shorter than what was said to be written, and goes on working after', async () => {
    await writeFile(join(dir, 'short'), 'four')
    await expect(hashFileOffThread(join(dir, 'short'), 10)).rejects.toMatchObject({ code: 'EIO' })
    await expect(hashFileOffThread(join(dir, 'gone'), 10)).rejects.toMatchObject({ code: 'EIO' })
    expect(await hashFileOffThread(join(dir, 'short'), 4)).toBe(sha('four'))
  })
})
