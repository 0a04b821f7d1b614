import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { removeStaleContainers } from '../src/index.js'
import { isRoot, makeBusyboxRootfs, removeDir, runcList, tempDir } from './helpers.js'

describe.runIf(isRoot)('removeStaleContainers', () => {
  let work: string
  let stateDir: string

  beforeAll(async () => {
    work = await tempDir()
    await makeBusyboxRootfs(join(work, 'bundle', 'rootfs'))
    stateDir = join(work, 'runc')
  })
  afterAll(async () => {
    if (work && existsSync(stateDir)) {
      for (const id of runcList(stateDir).split('\n').filter(Boolean))
        execFileSync('runc', ['--root', stateDir, 'delete', '--force', id])
    }
    await removeDir(work)
  })

  it('kills and deletes what a killed process left running, and its bundles', async () => {
    // What a SIGKILLed stacker leaves: a running container and a bundle dir in the state dir.
    const bundle = join(work, 'bundle')
    execFileSync('runc', ['spec'], { cwd: bundle })
    const spec = JSON.parse(await readFile(join(bundle, 'config.json'), 'utf8')) as {
      process: { terminal: boolean; args: string[] }
    }
    spec.process.terminal = false
    spec.process.args = ['/bin/sleep', '1000']
    await writeFile(join(bundle, 'config.json'), JSON.stringify(spec))
    execFileSync('runc', ['--root', stateDir, 'run', '--detach', '--bundle', bundle, 'left-over'], { stdio: 'ignore' })
    await mkdir(join(stateDir, 'bundle-abc123'))
    await writeFile(join(stateDir, 'bundle-abc123', 'config.json'), '{}')
    const state = JSON.parse(
      execFileSync('runc', ['--root', stateDir, 'state', 'left-over'], { encoding: 'utf8' }),
    ) as {
      pid: number
      status: string
    }
    expect(state.status).toBe('running')

    expect(await removeStaleContainers(stateDir)).toEqual(['left-over'])
    expect(runcList(stateDir)).toBe('')
    expect(await readdir(stateDir)).toEqual([])
    // Gone, or a zombie waiting for a parent that does not reap: either way it runs no more.
    const stat = await readFile(`/proc/${state.pid}/stat`, 'utf8').catch(() => '')
    expect(stat === '' || stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z'), stat).toBe(true)
  })

  it('is a no-op on a missing or empty state dir', async () => {
    expect(await removeStaleContainers(join(work, 'missing'))).toEqual([])
    await mkdir(join(work, 'empty'))
    expect(await removeStaleContainers(join(work, 'empty'))).toEqual([])
  })
})
