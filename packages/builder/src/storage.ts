import { mkdir } from 'node:fs/promises'
import { isStackerError, StackerError } from '@stacker/core'
import { goQuote, OciLayout } from '@stacker/oci'
import { join } from 'node:path'
import { acquireStorageLocks, checkOverlay, initStorage, OverlayStore, type Lock } from '@stacker/overlay'
import { removeStaleContainers } from '@stacker/runtime'
import type { Session } from './types.js'

export interface OpenStorage {
  store: OverlayStore
  lock: Lock
  runtimeDir: string
}

/** Storage initialisation as upstream does it, the overlay check and the locks, done by every command that
 *  uses the roots dir. The caller releases the lock. */
export async function openStorage(s: Session): Promise<OpenStorage> {
  const { stackerDir, rootsDir, rootsDirArg } = s.dirs
  await initStorage({ stackerDir, rootsDir, rootsDirArg })
  const lock = await acquireStorageLocks(stackerDir, rootsDir)
  try {
    // Checked for real once per boot and filesystem: the test mount is most of a no-op build's time.
    await checkOverlay(rootsDir, { cacheFile: join(stackerDir, 'overlay-check.json') })
    const runtimeDir = join(stackerDir, 'runc')
    // Containers of a killed stacker still run in its build dirs: stop them before those are removed.
    await removeStaleContainers(runtimeDir, { logger: s.logger })
    const store = await OverlayStore.open(rootsDir, { logger: s.logger })
    await mkdir(runtimeDir, { recursive: true })
    return { store, lock, runtimeDir }
  } catch (e) {
    await lock.release()
    throw e
  }
}

/** The output layout (`--oci-dir`), with upstream's messages for a dir that is not one. */
export async function openOutputLayout(s: Session, opts: { create: boolean }): Promise<OciLayout> {
  try {
    return await OciLayout.open(s.dirs.ociDir, { create: opts.create, logger: s.logger })
  } catch (e) {
    if (!isStackerError(e, 'OCI_LAYOUT') || e.detail === undefined || e.detail.reason === 'missing') throw e
    const what = e.detail.reason === 'not-a-directory' ? 'is not a directory' : 'does not look like an OCI Layout'
    throw new StackerError('OCI_LAYOUT', `parameter oci-dir=${goQuote(s.dirs.ociDir)} exists but ${what}.`, {
      cause: e,
      detail: e.detail,
    })
  }
}
