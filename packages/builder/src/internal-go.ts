import { chmod, chown, lstat, rm } from 'node:fs/promises'
import { StackerError } from '@stacker/core'
import { copyImage } from '@stacker/registry'
import type { Session } from './types.js'
import { copyTree } from './util.js'

/** The source and destination of `stacker internal-go copy` (`oci:<dir>[:<ref>]` or `docker://...`). */
export interface InternalCopyOptions {
  src: string
  dest: string
  /** Explicit TLS verification per side; unset leaves a loopback registry free to be plain http. */
  srcTlsVerify?: boolean
  destTlsVerify?: boolean
}

/** `stacker internal-go copy SRC DEST`: copies an image between `oci:` layouts and `docker://`
 *  registries (see copyImage). Progress lines go to stdout, as upstream's do. */
export async function internalCopy(s: Session, o: InternalCopyOptions): Promise<void> {
  await copyImage({
    src: o.src,
    dest: o.dest,
    ...(o.srcTlsVerify !== undefined ? { srcTlsVerify: o.srcTlsVerify } : {}),
    ...(o.destTlsVerify !== undefined ? { destTlsVerify: o.destTlsVerify } : {}),
    logger: s.logger,
    report: (line) => s.output(Buffer.from(`${line}\n`)),
  })
}

/**
 * `stacker internal-go cp SRC DEST`: a directory is copied into DEST (created if missing, merged
 * into if present); anything else (file, symlink, device) replaces DEST. Ownership, modes, times
 * and xattrs are kept, as `cp -a` keeps them.
 */
export async function internalCp(src: string, dest: string): Promise<void> {
  let isDir: boolean
  try {
    isDir = (await lstat(src)).isDirectory()
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT')
      throw new StackerError('NOT_FOUND', `cp: ${src}: no such file or directory`)
    throw e
  }
  if (!isDir) await rm(dest, { recursive: true, force: true })
  await copyTree(src, dest)
}

/** `stacker internal-go chmod OCTAL PATH`. */
export async function internalChmod(mode: string, path: string): Promise<void> {
  if (!/^[0-7]{1,4}$/.test(mode)) throw new StackerError('USAGE', `invalid mode ${JSON.stringify(mode)}: not octal`)
  await withPath('chmod', path, () => chmod(path, Number.parseInt(mode, 8)))
}

/** `stacker internal-go chown UID[:GID] PATH`; without GID the group is left as it is, as chown(1)
 *  leaves it. */
export async function internalChown(owner: string, path: string): Promise<void> {
  const m = /^(\d+)(?::(\d+))?$/.exec(owner)
  if (!m) throw new StackerError('USAGE', `invalid owner ${JSON.stringify(owner)}: expected UID[:GID]`)
  const uid = Number(m[1])
  const gid = m[2] === undefined ? -1 : Number(m[2])
  if (uid > 0xfffffffe || gid > 0xfffffffe)
    throw new StackerError('USAGE', `invalid owner ${JSON.stringify(owner)}: id out of range`)
  await withPath('chown', path, () => chown(path, uid, gid))
}

async function withPath(what: string, path: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn()
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    if (code === 'ENOENT') throw new StackerError('NOT_FOUND', `${what} ${path}: no such file or directory`)
    throw new StackerError('INTERNAL', `${what} ${path}: ${(e as Error).message}`, { cause: e })
  }
}

/** Exit status of `check-aa-profile` when AppArmor is absent, which upstream's test suite checks. */
export const NO_APPARMOR_EXIT = 52
