import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { acquireLock, acquireStorageLocks } from '../src/index.js'
import { cleanDir, tempDir } from './helpers.js'

const holdLock = fileURLToPath(new URL('./fixtures/hold-lock.mjs', import.meta.url))

/** Starts `cmd` in its own process group and resolves once it printed `ready`. */
async function startHolder(cmd: string, args: string[], ready: string): Promise<ChildProcess> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  let out = ''
  let err = ''
  child.stderr?.on('data', (d) => {
    err += d
  })
  await new Promise<void>((res, rej) => {
    child.stdout?.on('data', (d) => {
      out += d
      if (out.includes(ready)) res()
    })
    child.once('exit', (code) => rej(new Error(`${cmd} exited ${code} before holding the lock: ${err}`)))
  })
  return child
}

async function killGroup(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  process.kill(-child.pid!, 'SIGKILL')
  await exited
}

/** Blocks until nobody holds `file`: a deterministic wait for a dead holder's lock to go away. */
function waitUntilFree(file: string): void {
  execFileSync('flock', ['--wait', '30', file, 'true'])
}

describe('acquireLock', () => {
  let dir: string
  const holders: ChildProcess[] = []
  beforeEach(async () => {
    dir = await tempDir('stacker-lock-')
  })
  afterEach(async () => {
    for (const h of holders.splice(0)) await killGroup(h)
    await cleanDir(dir)
  })

  it('refuses a second holder at once, naming this process, and allows it after release', async () => {
    const file = join(dir, 'roots', '.lock')
    const lock = await acquireLock(file)
    let err: unknown
    try {
      await acquireLock(file)
    } catch (e) {
      err = e
    }
    expect(err).toMatchObject({ code: 'LOCK' })
    expect((err as Error).message).toMatch(
      new RegExp(`^couldn't acquire lock on ${file}: lock owned by pid ${process.pid} \\(.*\\S.*\\)$`),
    )
    await lock.release()
    await lock.release()
    const again = await acquireLock(file)
    await again.release()
  })

  it('is a real flock: an external flock holder blocks it until it dies', async () => {
    const file = join(dir, '.lock')
    const holder = await startHolder('flock', [file, 'sh', '-c', 'echo held; exec sleep 300'], 'held')
    holders.push(holder)
    await expect(acquireLock(file)).rejects.toThrow(
      new RegExp(`^couldn't acquire lock on ${file}: lock owned by pid ${holder.pid} \\(flock ${file} sh -c`),
    )
    await killGroup(holder)
    waitUntilFree(file)
    const lock = await acquireLock(file)
    // And while we hold it, an external non-blocking flock fails.
    expect(() => execFileSync('flock', ['--nonblock', file, 'true'], { stdio: 'ignore' })).toThrow()
    await lock.release()
    execFileSync('flock', ['--nonblock', file, 'true'])
  })

  it('dies with its process, even on SIGKILL', async () => {
    const file = join(dir, '.lock')
    const holder = await startHolder(process.execPath, [holdLock, file], 'held')
    holders.push(holder)
    await expect(acquireLock(file)).rejects.toThrow(`lock owned by pid ${holder.pid} (`)
    await killGroup(holder)
    waitUntilFree(file)
    const lock = await acquireLock(file)
    await lock.release()
  })

  it('takes the stacker and roots locks together, or neither', async () => {
    const stackerDir = join(dir, '.stacker')
    const rootsDir = join(dir, 'roots')
    const roots = await acquireLock(join(rootsDir, '.lock'))
    await expect(acquireStorageLocks(stackerDir, rootsDir)).rejects.toThrow(
      `couldn't acquire lock on ${join(rootsDir, '.lock')}`,
    )
    // The stacker dir lock taken first was given back.
    const st = await acquireLock(join(stackerDir, '.lock'))
    await st.release()
    await roots.release()
    const both = await acquireStorageLocks(stackerDir, rootsDir)
    await expect(acquireLock(join(stackerDir, '.lock'))).rejects.toThrow("couldn't acquire lock")
    await both.release()
  })

  it('names this process as the owner of both storage locks, and frees both on release', async () => {
    const stackerDir = join(dir, '.stacker')
    const rootsDir = join(dir, 'roots')
    const both = await acquireStorageLocks(stackerDir, rootsDir)
    for (const file of [join(stackerDir, '.lock'), join(rootsDir, '.lock')]) {
      await expect(acquireLock(file)).rejects.toThrow(
        new RegExp(`^couldn't acquire lock on ${file}: lock owned by pid ${process.pid} \\(`),
      )
      expect(() => execFileSync('flock', ['--nonblock', file, 'true'], { stdio: 'ignore' })).toThrow()
    }
    await both.release()
    for (const file of [join(stackerDir, '.lock'), join(rootsDir, '.lock')])
      execFileSync('flock', ['--nonblock', file, 'true'])
  })

  it('gives up on a busy stacker dir lock without touching the roots dir lock', async () => {
    const stackerDir = join(dir, '.stacker')
    const rootsDir = join(dir, 'roots')
    const st = await acquireLock(join(stackerDir, '.lock'))
    await expect(acquireStorageLocks(stackerDir, rootsDir)).rejects.toThrow(
      `couldn't acquire lock on ${join(stackerDir, '.lock')}: lock owned by pid ${process.pid}`,
    )
    const roots = await acquireLock(join(rootsDir, '.lock'))
    await roots.release()
    await st.release()
  })
})
