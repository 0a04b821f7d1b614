import { lstat } from 'node:fs/promises'
import { join } from 'node:path'
import { StackerError } from '@stacker/core'
import { STORE_DIR } from './store.js'

/** What an earlier run leaves behind, owned by whoever ran it: the stacker dir's storage type
 *  (written by every storage-using command) and the roots dir's layer store. */
export function storageMarkers(dirs: { stackerDir: string; rootsDir: string }): string[] {
  return [join(dirs.stackerDir, 'storage.type'), join(dirs.rootsDir, STORE_DIR)]
}

/**
 * Refuses storage made by another user (upstream's "previous run of stacker found with uid N"):
 * a roots dir built by root holds files an ordinary user can neither change nor remove, and one
 * built in a user namespace holds files owned by subordinate ids, which root would keep as they are
 * (root building on them would mix both kinds of ownership into the layers). Nothing is removed:
 * the error names the dir and the command that clears it. `uid` is the caller's effective uid
 * outside any namespace of its own, `userName` its name for the message. The caller skips the
 * check for root's `clean` (root can remove both kinds). Missing markers mean no earlier run.
 */
export async function checkStorageOwner(
  dirs: { stackerDir: string; rootsDir: string },
  uid: number,
  opts: { userName?: string | undefined } = {},
): Promise<void> {
  for (const marker of storageMarkers(dirs)) {
    let owner: number
    try {
      owner = (await lstat(marker)).uid
    } catch {
      continue
    }
    if (owner === uid) continue
    const dir = marker.startsWith(`${dirs.rootsDir}/`) ? dirs.rootsDir : dirs.stackerDir
    const fix =
      owner === 0
        ? `as root, run \`stacker clean\` there, then \`stacker unpriv-setup --username ${opts.userName ?? 'NAME'}\` to hand the dirs to that user`
        : uid === 0
          ? `run \`stacker clean\` there (as root or as uid ${owner}) before building as root`
          : `run \`stacker clean\` there as uid ${owner}, or as root`
    throw new StackerError('USAGE', `previous run of stacker found with uid ${owner} in ${dir}: ${fix}`, {
      hint: 'one stacker, roots and oci dir serve one user: root builds and unprivileged builds need dirs of their own',
    })
  }
}
