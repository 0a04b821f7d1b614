import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { type Logger, pathExists } from '@stacker/core'
import { removeTree, unmountAll } from './mounts.js'
import { encodeLayerName } from './names.js'

/** Where one layer's build happens: a writable overlay of its chain is mounted at `rootfs` with
 *  `upper` and `work`; `upper` then holds what the build changed. */
export interface BuildWorkspace {
  /** build/<name>: everything below it is the build's and goes with it. */
  root: string
  upper: string
  work: string
  rootfs: string
}

/** The workspace dir of `name` in `buildDir` (the store's `build/`). */
export function workspaceRoot(buildDir: string, name: string): string {
  return join(buildDir, encodeLayerName(name))
}

/** A fresh, empty workspace for `name` in `buildDir`, whatever an earlier (killed) build left there
 *  removed first, mounts included. `viewDir` is the layer's view dir, if it can have one: its
 *  `rootfs` is then the mount point, as upstream's `roots/<name>/rootfs`. */
export async function prepareWorkspace(
  buildDir: string,
  name: string,
  viewDir: string | undefined,
  logger: Logger,
): Promise<BuildWorkspace> {
  const root = workspaceRoot(buildDir, name)
  if (await pathExists(root)) {
    logger.debug(`removing leftovers of an earlier build of ${name}`)
    await removeTree(root)
  }
  let rootfs = join(root, 'rootfs')
  if (viewDir !== undefined) {
    rootfs = join(viewDir, 'rootfs')
    await unmountAll(rootfs)
  }
  const ws = { root, upper: join(root, 'upper'), work: join(root, 'work'), rootfs }
  for (const d of [ws.upper, ws.work, ws.rootfs]) await mkdir(d, { recursive: true })
  return ws
}
