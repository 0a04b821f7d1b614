import { onCleanup, StackerError, type StackerErrorCode } from '@stacker/core'

/** Debian package that provides each tool, for the TOOL_MISSING hint. */
const PACKAGES: Readonly<Record<string, string>> = {
  mksquashfs: 'squashfs-tools',
  unsquashfs: 'squashfs-tools',
  squashfuse: 'squashfuse',
  squashfuse_ll: 'squashfuse',
  fusermount: 'fuse',
  fusermount3: 'fuse3',
  'mkfs.erofs': 'erofs-utils',
  'fsck.erofs': 'erofs-utils',
  veritysetup: 'cryptsetup-bin',
  mount: 'mount',
  umount: 'mount',
  cp: 'coreutils',
}

export interface RunOptions {
  /** Error code when the tool exits non-zero. */
  code: StackerErrorCode
  /** Replaces the inherited environment entirely when given (LC_ALL=C is always added). */
  env?: Record<string, string>
}

export interface RunResult {
  stdout: string
  stderr: string
}

/** Runs a tool to completion. The child is killed if the process is interrupted meanwhile.
 *  Throws TOOL_MISSING when the tool is not installed, `opts.code` when it exits non-zero. */
export async function run(cmd: string, args: readonly string[], opts: RunOptions): Promise<RunResult> {
  const env = { ...(opts.env ?? stringEnv(process.env)), LC_ALL: 'C' }
  // Loaded on first use: execa's import costs about a tenth of a second of start-up.
  const { execa } = await import('execa')
  const child = execa(cmd, args, { reject: false, extendEnv: false, env, stdin: 'ignore', stripFinalNewline: false })
  const unregister = onCleanup(() => {
    child.kill('SIGKILL')
  })
  let result: Awaited<typeof child>
  try {
    result = await child
  } finally {
    unregister()
  }
  const stdout = String(result.stdout ?? '')
  const stderr = String(result.stderr ?? '')
  if (result.code === 'ENOENT') {
    const pkg = PACKAGES[cmd]
    throw new StackerError('TOOL_MISSING', `${cmd} not found`, pkg ? { hint: `install ${pkg}` } : {})
  }
  if (result.failed) {
    const detail = lastLines(stderr || stdout) || (result.signal ? `killed by ${result.signal}` : 'failed')
    throw new StackerError(opts.code, `${cmd} ${args.join(' ')}: ${detail}`, { cause: result })
  }
  return { stdout, stderr }
}

/** process.env without undefined values. */
export function stringEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(env)) if (v !== undefined) out[k] = v
  return out
}

function lastLines(s: string, n = 5): string {
  return s.trim().split('\n').slice(-n).join('; ')
}
