import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { open, stat, truncate } from 'node:fs/promises'
import { StackerError } from '@stacker/core'
import { run } from './exec.js'
import { detectFsImageKind, fsImageDataSize, roundUp, VERITY_BLOCK } from './superblock.js'

const ROOT_HASH_RE = /^[0-9a-f]{64}$/

/** Appends a dm-verity hash tree to an image file, in place: the file is padded with zeros to a
 *  multiple of 4096, then `veritysetup format` writes a format-1 sha256 tree with 4096-byte blocks
 *  and its superblock at that offset. The salt is the sha256 of the padded image and the verity
 *  UUID is derived from it, so the same image always gives the same bytes and root hash.
 *  Not idempotent: call it once per image. */
export async function appendVerity(file: string): Promise<{ rootHash: string; hashOffset: number }> {
  const size = (await stat(file)).size
  if (size === 0) throw new StackerError('LAYER', `${file}: cannot add verity data to an empty image`)
  const hashOffset = roundUp(size, VERITY_BLOCK)
  if (hashOffset !== size) await truncate(file, hashOffset)
  const salt = await sha256File(file)
  const { stdout } = await run(
    'veritysetup',
    [
      'format',
      '--format=1',
      '--hash=sha256',
      '--data-block-size=4096',
      '--hash-block-size=4096',
      `--hash-offset=${hashOffset}`,
      `--data-blocks=${hashOffset / VERITY_BLOCK}`,
      `--salt=${salt}`,
      `--uuid=${uuidFrom(salt)}`,
      file,
      file,
    ],
    { code: 'LAYER' },
  )
  const m = /^Root hash:\s*([0-9a-f]+)\s*$/m.exec(stdout)
  if (!m?.[1]) throw new StackerError('INTERNAL', `veritysetup format printed no root hash: ${stdout.trim()}`)
  return { rootHash: m[1], hashOffset }
}

/** Checks an image's appended verity data against `rootHash`: every data block and hash block is
 *  read. `hashOffset` defaults to the filesystem size from the image's superblock, rounded up to
 *  4096. Throws LAYER `invalid root hash ...` when anything does not match. Reads only. */
export async function verifyVerity(file: string, rootHash: string, hashOffset?: number): Promise<void> {
  const invalid = (why: string) =>
    new StackerError('LAYER', `invalid root hash ${rootHash} for ${file}: ${why}`, {
      hint: 'the layer blob does not match its verity annotation; it may be corrupt or tampered with',
    })
  if (!ROOT_HASH_RE.test(rootHash)) throw invalid('not a sha256 hex digest')
  let offset = hashOffset
  if (offset === undefined) {
    const kind = await detectFsImageKind(file)
    if (!kind) throw invalid('not a squashfs or erofs image')
    offset = await fsImageDataSize(file, kind)
  }
  await checkVeritySuperblock(file, offset, invalid)
  try {
    await run('veritysetup', ['verify', file, file, rootHash, `--hash-offset=${offset}`], { code: 'LAYER' })
  } catch (e) {
    if (e instanceof StackerError && e.code === 'LAYER') throw invalid('verification failed')
    throw e
  }
}

/** A verity superblock whose data-block count is not the whole filesystem would verify only a
 *  prefix of the image, so that is refused before veritysetup runs. */
async function checkVeritySuperblock(file: string, offset: number, invalid: (why: string) => Error): Promise<void> {
  const fh = await open(file, 'r')
  try {
    const sb = Buffer.alloc(512)
    const { bytesRead } = await fh.read(sb, 0, sb.length, offset)
    if (bytesRead < 88 || sb.toString('latin1', 0, 8) !== 'verity\0\0') throw invalid(`no verity data at ${offset}`)
    const dataBlockSize = sb.readUInt32LE(64)
    const dataBlocks = Number(sb.readBigUInt64LE(72))
    if (dataBlocks * dataBlockSize !== offset) {
      throw invalid(`verity data covers ${dataBlocks * dataBlockSize} bytes, the filesystem ${offset}`)
    }
  } finally {
    await fh.close()
  }
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer)
  return h.digest('hex')
}

/** A name-based (version 8) UUID from the salt: fixed for a given image, distinct across images. */
function uuidFrom(salt: string): string {
  const b = createHash('sha256').update(`stacker verity uuid\0${salt}`).digest().subarray(0, 16)
  b[6] = (b[6]! & 0x0f) | 0x80
  b[8] = (b[8]! & 0x3f) | 0x80
  const h = b.toString('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}
