import { readdir, rm } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { type Logger, silentLogger } from '@stacker/core'
import { runTool } from '@stacker/core'
import { runcGlobals } from './run.js'

const BUNDLE_PREFIX = 'bundle-'

/**
 * Kills and deletes every container runc knows under `stateDir` and removes the bundle dirs that
 * runs left there. For a process that was SIGKILLed mid-run: its containers keep running (and keep
 * writing into their rootfs) and its bundles make `runc list` fail until someone removes them.
 *
 * Only call while holding what makes `stateDir` this process's alone (the stacker dir lock): every
 * container in it is then a leftover. Idempotent; a missing `stateDir` is fine. Returns the ids of
 * the containers it removed.
 */
export async function removeStaleContainers(stateDir: string, opts: { logger?: Logger } = {}): Promise<string[]> {
  const logger = opts.logger ?? silentLogger
  const root = resolve(stateDir)
  let entries: string[]
  try {
    entries = await readdir(root)
  } catch {
    return []
  }
  const runc = (args: string[]) => runTool('runc', [...runcGlobals(root), ...args], { stdin: 'ignore' })
  const removed: string[] = []
  for (const id of entries.filter((e) => !e.startsWith(BUNDLE_PREFIX)).sort()) {
    // `delete --force` kills a running container first; a state dir runc cannot load is removed by hand.
    const r = await runc(['delete', '--force', id])
    if (r.exitCode !== 0) logger.debug(`runc delete ${id}: ${String(r.stderr).trim()}`)
    await rm(join(root, id), { recursive: true, force: true })
    removed.push(id)
  }
  for (const b of entries.filter((e) => e.startsWith(BUNDLE_PREFIX))) {
    await rm(join(root, b), { recursive: true, force: true })
  }
  if (removed.length > 0) logger.debug(`removed ${removed.length} stale containers from ${root}`)
  return removed
}
