import { execFileSync } from 'node:child_process'
import { mkdir, readFile, readdir, readlink, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { isStackerError, runCleanups } from '@stacker/core'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { runContainer } from '../src/index.js'
import { isRoot, makeBusyboxRootfs, removeDir, runcList, sh, tempDir } from './helpers.js'

describe.runIf(isRoot)('runContainer', () => {
  let work: string
  let rootfs: string
  let stateDir: string

  beforeAll(async () => {
    work = await tempDir()
    rootfs = await makeBusyboxRootfs(join(work, 'rootfs'))
    await mkdir(join(rootfs, 'tmp'))
    stateDir = join(work, 'runc')
  })

  afterAll(async () => {
    await removeDir(work)
  })

  afterEach(async () => {
    // Every run, however it ended, leaves no container and no bundle behind.
    expect(runcList(stateDir)).toBe('')
    expect(await readdir(stateDir)).toEqual([])
  })

  it('propagates exit codes', async () => {
    expect((await sh({ rootfs, stateDir }, 'exit 0')).exitCode).toBe(0)
    expect((await sh({ rootfs, stateDir }, 'exit 7')).exitCode).toBe(7)
    expect((await sh({ rootfs, stateDir }, 'exit 255')).exitCode).toBe(255)
  })

  it('sets the hostname, default stacker', async () => {
    expect((await sh({ rootfs, stateDir }, 'hostname')).output).toBe('stacker\n')
    expect((await sh({ rootfs, stateDir, hostname: 'other' }, 'hostname')).output).toBe('other\n')
  })

  it('runs the command as PID 1 in new pid, uts, ipc and mount namespaces, with the host network', async () => {
    const nsIno = (ns: string) => execFileSync('stat', ['-L', '-c', '%i', `/proc/self/ns/${ns}`], { encoding: 'utf8' })
    const r = await sh(
      { rootfs, stateDir },
      'echo pid=$$; for n in net pid uts ipc mnt; do echo $n=$(stat -L -c %i /proc/self/ns/$n); done; cat /proc/1/cmdline | tr "\\0" " "',
    )
    expect(r.exitCode).toBe(0)
    const lines = r.output.split('\n')
    const get = (k: string) => lines.find((l) => l.startsWith(`${k}=`))?.slice(k.length + 1)
    expect(get('pid')).toBe('1')
    expect(`${get('net')}\n`).toBe(nsIno('net'))
    for (const ns of ['pid', 'uts', 'ipc', 'mnt']) expect(`${get(ns)}\n`).not.toBe(nsIno(ns))
    expect(r.output).toContain('/bin/sh -c echo pid=$$')
  })

  it('provides /proc, /dev with the standard devices, /dev/shm, /dev/pts and /sys', async () => {
    const r = await sh(
      { rootfs, stateDir },
      [
        'for d in null zero full random urandom tty; do test -c /dev/$d || echo missing $d; done',
        'test -d /dev/pts || echo missing pts',
        'grep -q " /dev/shm tmpfs " /proc/mounts || echo missing shm',
        'echo x > /dev/shm/f && cat /dev/shm/f',
        'head -c 5 /dev/zero | wc -c',
        'test -d /sys/kernel || echo missing sys',
        'grep -q " /sys sysfs ro," /proc/mounts || echo sys not ro',
        'cat /proc/kcore 2>/dev/null | wc -c',
      ].join('\n'),
    )
    expect(r.output).toBe('x\n5\n0\n')
    expect(r.exitCode).toBe(0)
  })

  it('passes the environment exactly as given (runc adds HOME only when missing)', async () => {
    const env = ['PATH=/bin', 'A=1', 'B=two words', 'HOME=/root']
    let out = ''
    const r = await runContainer({
      rootfs,
      stateDir,
      env,
      args: ['/bin/cat', '/proc/self/environ'],
      stdio: 'pipe',
      onOutput: (c) => (out += Buffer.from(c).toString()),
    })
    expect(r.exitCode).toBe(0)
    expect(out.split('\0').filter((s) => s !== '')).toEqual(env)
  })

  it('honours cwd and user', async () => {
    const r = await sh({ rootfs, stateDir, cwd: '/tmp', user: { uid: 1000, gid: 1001 } }, 'pwd; id -u; id -g')
    expect(r.output).toBe('/tmp\n1000\n1001\n')
  })

  it('mounts binds read-write and read-only, directories and files', async () => {
    const rw = join(work, 'rw')
    const ro = join(work, 'ro')
    const file = join(work, 'file.txt')
    await mkdir(rw)
    await mkdir(ro)
    await writeFile(join(ro, 'in'), 'hello\n')
    await writeFile(file, 'a file\n')
    try {
      const r = await sh(
        {
          rootfs,
          stateDir,
          mounts: [
            { source: rw, dest: '/rw' },
            { source: ro, dest: '/ro', readonly: true },
            { source: file, dest: '/etc/file.txt', readonly: true },
          ],
        },
        [
          'echo written > /rw/out',
          'cat /ro/in',
          'touch /ro/nope 2>/dev/null && echo ro writable',
          'cat /etc/file.txt',
          'grep " /ro " /proc/mounts | grep -q " ro," || echo ro not ro',
        ].join('\n'),
      )
      expect(r.output).toBe('hello\na file\n')
      expect(r.exitCode).toBe(0)
      expect(await readFile(join(rw, 'out'), 'utf8')).toBe('written\n')
      expect(await readdir(ro)).toEqual(['in'])
    } finally {
      await removeDir(rw)
      await removeDir(ro)
      await removeDir(file)
    }
  })

  it('refuses a missing bind source with upstream message', async () => {
    const err = await sh({ rootfs, stateDir, mounts: [{ source: '/no/such/dir', dest: '/x' }] }, 'true').catch(
      (e: unknown) => e,
    )
    expect(isStackerError(err) && err.code).toBe('RUN_FAILED')
    expect((err as Error).message).toMatch(
      /^failed to bind mount "\/no\/such\/dir" at "\/x": bind mount source "\/no\/such\/dir" does not exist, refusing bind mount: /,
    )
  })

  it('throws RUN_FAILED when the command cannot be started', async () => {
    const err = await runContainer({ rootfs, stateDir, env: [], args: ['/no-such-binary'], stdio: 'pipe' }).catch(
      (e: unknown) => e,
    )
    expect(isStackerError(err) && err.code).toBe('RUN_FAILED')
    expect((err as Error).message).toContain('no-such-binary')
  })

  it('binds the host resolv.conf read-only, or not at all when asked', async () => {
    const host = await readFile('/etc/resolv.conf', 'utf8')
    const r = await sh(
      { rootfs, stateDir },
      'cat /etc/resolv.conf; { echo x >> /etc/resolv.conf; } 2>/dev/null || echo ro',
    )
    expect(r.output).toBe(`${host}ro\n`)
    const off = await sh({ rootfs, stateDir, resolvConf: false }, 'cat /etc/resolv.conf 2>/dev/null | wc -c')
    expect(off.output.trim()).toBe('0')
  })

  it('merges stdout and stderr in order', async () => {
    const r = await sh({ rootfs, stateDir }, 'i=0; while [ $i -lt 200 ]; do echo o$i; echo e$i >&2; i=$((i+1)); done')
    const expected = Array.from({ length: 200 }, (_, i) => `o${i}\ne${i}\n`).join('')
    expect(r.output).toBe(expected)
  })

  it('runs commands from PATH and from binds, without leaking its helper', async () => {
    const tools = join(work, 'tools')
    await mkdir(tools)
    await writeFile(join(tools, 'hello'), '#!/bin/sh\necho hello from $0 >&2\n', { mode: 0o755 })
    await writeFile(join(tools, 'junk'), 'not a program\n', { mode: 0o755 })
    try {
      const base = { rootfs, stateDir, mounts: [{ source: tools, dest: '/tools', readonly: true }] }
      let out = ''
      const r = await runContainer({
        ...base,
        env: ['PATH=/tools:/bin'],
        args: ['hello'],
        stdio: 'pipe',
        onOutput: (c) => (out += Buffer.from(c).toString()),
      })
      expect([r.exitCode, out]).toEqual([0, 'hello from /tools/hello\n'])
      const fds = await sh(base, 'ls /proc/self/fd | tr "\\n" " "')
      expect(fds.output).toBe('0 1 2 3 ') // 3 is the directory ls is reading
      out = ''
      const direct = await runContainer({
        ...base,
        env: [],
        args: ['/tools/junk'],
        stdio: 'pipe',
        onOutput: (c) => (out += Buffer.from(c).toString()),
      })
      expect([direct.exitCode, out]).toEqual([127, 'stacker: cannot execute /tools/junk\n'])
    } finally {
      await removeDir(tools)
    }
  })

  it('streams output as it comes, before the command ends', async () => {
    const chan = join(work, 'chan')
    await mkdir(chan)
    try {
      let seen = ''
      // The script waits (bounded) for a file the test writes only after it has received the first
      // line; if output were held back until exit, the script would time out instead.
      const r = await runContainer({
        rootfs,
        stateDir,
        env: ['PATH=/bin'],
        args: [
          '/bin/sh',
          '-c',
          'echo first; i=0; while [ ! -e /chan/go ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; test -e /chan/go && echo got-it || echo timed-out',
        ],
        mounts: [{ source: chan, dest: '/chan' }],
        stdio: 'pipe',
        onOutput: (c) => {
          seen += Buffer.from(c).toString()
          if (seen.includes('first')) void writeFile(join(chan, 'go'), '')
        },
      })
      expect(r.exitCode).toBe(0)
      expect(seen).toBe('first\ngot-it\n')
    } finally {
      await removeDir(chan)
    }
  })

  it('runs with inherited stdio', async () => {
    const r = await runContainer({
      rootfs,
      stateDir,
      env: ['PATH=/bin'],
      args: ['/bin/sh', '-c', 'exit 3'],
      stdio: 'inherit',
    })
    expect(r.exitCode).toBe(3)
  })

  it('kills and deletes the container on abort', async () => {
    const ac = new AbortController()
    const p = runContainer({
      rootfs,
      stateDir,
      env: ['PATH=/bin'],
      args: ['/bin/sh', '-c', 'echo ready; exec sleep 100'],
      stdio: 'pipe',
      signal: ac.signal,
      onOutput: (c) => {
        if (Buffer.from(c).toString().includes('ready')) ac.abort()
      },
    })
    const err = await p.catch((e: unknown) => e)
    expect(isStackerError(err) && err.code).toBe('INTERRUPTED')
    // Settling at all proves the kill: the command would outlast the test timeout. afterEach checks
    // that no runc state and no bundle remain.
  })

  it('aborts cleanly whatever stage the start has reached', async () => {
    for (const ms of [0, 2, 10, 30, 60]) {
      const ac = new AbortController()
      setTimeout(() => ac.abort(), ms)
      const err = await sh({ rootfs, stateDir, signal: ac.signal }, 'exec sleep 100').catch((e: unknown) => e)
      expect(isStackerError(err) && err.code).toBe('INTERRUPTED')
      expect(runcList(stateDir)).toBe('')
    }
  })

  it('is killed by the process cleanups when the process is interrupted', async () => {
    const r = await runContainer({
      rootfs,
      stateDir,
      env: ['PATH=/bin'],
      args: ['/bin/sh', '-c', 'echo ready; exec sleep 100'],
      stdio: 'pipe',
      onOutput: (c) => {
        if (Buffer.from(c).toString().includes('ready')) void runCleanups()
      },
    })
    expect(r.exitCode).toBe(137)
  })

  it('grants what package managers need: chown, mknod, mount, setuid, chroot', async () => {
    const r = await sh(
      { rootfs, stateDir },
      [
        'touch /tmp/f && chown 123:456 /tmp/f && stat -c %u:%g /tmp/f',
        'mknod /tmp/null c 1 3 && echo x > /tmp/null && echo mknod ok',
        'mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && echo mount ok && umount /tmp/m',
        'echo nobody:x:65534:65534::/:/bin/sh > /etc/passwd',
        'su -s /bin/sh -c "id -u" nobody',
        'chroot / true && echo chroot ok',
        'rm -rf /tmp/f /tmp/null /tmp/m /etc/passwd',
      ].join(' && '),
    )
    expect(r.output).toBe('123:456\nmknod ok\nmount ok\n65534\nchroot ok\n')
  })

  it('rejects at once when already aborted', async () => {
    const ac = new AbortController()
    ac.abort()
    const err = await sh({ rootfs, stateDir, signal: ac.signal }, 'true').catch((e: unknown) => e)
    expect(isStackerError(err) && err.code).toBe('INTERRUPTED')
  })

  it('runs concurrent containers independently', async () => {
    const rs = await Promise.all([1, 2, 3].map((n) => sh({ rootfs, stateDir }, `echo ${n}; exit ${n}`)))
    expect(rs.map((r) => [r.exitCode, r.output])).toEqual([
      [1, '1\n'],
      [2, '2\n'],
      [3, '3\n'],
    ])
  })

  it('keeps its stubs out of a rootfs used as its own upper dir', async () => {
    const root = await makeBusyboxRootfs(join(work, 'stubs'))
    const data = join(work, 'data')
    const imports = join(work, 'imports')
    await mkdir(data)
    await mkdir(imports)
    await writeFile(join(imports, 'script'), 'echo imported\n')
    try {
      const r = await sh(
        {
          rootfs: root,
          stateDir,
          upperDir: root,
          mounts: [
            { source: data, dest: '/mnt/deep/data' },
            { source: imports, dest: '/stacker/imports', readonly: true },
          ],
        },
        'sh /stacker/imports/script; echo kept > /mnt/kept; mkdir -p /opt/made; echo x > /stacker/scratch',
      )
      expect(r.output).toBe('imported\n')
      expect(r.exitCode).toBe(0)
      // /proc, /dev, /sys, /etc/resolv.conf (and /etc), /mnt/deep/data and /stacker were stubs.
      expect((await readdir(root)).sort()).toEqual(['bin', 'mnt', 'opt'])
      expect((await readdir(join(root, 'mnt'))).sort()).toEqual(['kept'])
      expect(await readdir(join(root, 'opt'))).toEqual(['made'])
    } finally {
      await removeDir(root)
      await removeDir(data)
      await removeDir(imports)
    }
  })

  it('keeps what existed and what the command wrote into a stub', async () => {
    const root = await makeBusyboxRootfs(join(work, 'stubs2'))
    for (const d of ['proc', 'dev', 'sys', 'etc', 'srv']) await mkdir(join(root, d))
    await symlink('/run/resolvconf/resolv.conf', join(root, 'etc/resolv.conf'))
    const data = join(work, 'data2')
    await mkdir(data)
    try {
      const r = await sh(
        { rootfs: root, stateDir, upperDir: root, mounts: [{ source: data, dest: '/srv/data' }] },
        'echo mine > /srv/data/../note; cat /etc/resolv.conf',
      )
      expect(r.exitCode).toBe(0)
      expect(r.output).toBe(await readFile('/etc/resolv.conf', 'utf8'))
      // The symlinked resolv.conf got its stub (and /run) at the link target; both are gone.
      expect((await readdir(root)).sort()).toEqual(['bin', 'dev', 'etc', 'proc', 'srv', 'sys'])
      expect(await readdir(join(root, 'srv'))).toEqual(['note'])
      expect(await readlink(join(root, 'etc/resolv.conf'))).toBe('/run/resolvconf/resolv.conf')
    } finally {
      await removeDir(root)
      await removeDir(data)
    }
  })

  it('leaves only the command changes in an overlay upper dir', async () => {
    const base = join(work, 'ov')
    const lower = await makeBusyboxRootfs(join(base, 'lower'))
    for (const d of ['proc', 'dev', 'sys', 'etc']) await mkdir(join(lower, d))
    const upper = join(base, 'upper')
    const wd = join(base, 'work')
    const merged = join(base, 'merged')
    for (const d of [upper, wd, merged]) await mkdir(d)
    const data = join(base, 'data')
    await mkdir(data)
    execFileSync('mount', [
      '-t',
      'overlay',
      'overlay',
      '-o',
      `lowerdir=${lower},upperdir=${upper},workdir=${wd}`,
      merged,
    ])
    try {
      const r = await sh(
        {
          rootfs: merged,
          stateDir,
          upperDir: upper,
          mounts: [
            { source: data, dest: '/opt/data' },
            { source: data, dest: '/stacker/grab' },
          ],
        },
        'echo hi > /hello; echo grabbed > /stacker/grab/f',
      )
      expect(r.exitCode).toBe(0)
      expect(await readFile(join(data, 'f'), 'utf8')).toBe('grabbed\n')
      // /etc/resolv.conf was a stub under the lower's /etc: /etc itself was copied up; nothing else.
      expect((await readdir(upper)).sort()).toEqual(['etc', 'hello'])
      expect(await readdir(join(upper, 'etc'))).toEqual([])
      expect(await readdir(merged)).not.toContain('stacker')
    } finally {
      execFileSync('umount', [merged])
      await removeDir(base)
    }
  })
})
