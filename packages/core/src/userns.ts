import { readFileSync } from 'node:fs'

let cached: boolean | undefined

/**
 * Whether this process runs in a user namespace other than the initial one (an unprivileged
 * build's namespace, a rootless container). There uid 0 holds capabilities over the namespace's
 * own mounts only: the kernel refuses, among others, loop and block filesystem mounts (squashfs,
 * erofs), device nodes other than whiteouts, and a fresh sysfs without a network namespace.
 * The initial namespace maps all 2^32 ids onto themselves; any other map means a nested one.
 * Read once per process.
 */
export function runningInUserNamespace(): boolean {
  if (cached !== undefined) return cached
  try {
    const map = readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/)
    cached = !(map.length === 3 && map[0] === '0' && map[1] === '0' && map[2] === '4294967295')
  } catch {
    // No /proc: nothing says this is a nested namespace.
    cached = false
  }
  return cached
}
