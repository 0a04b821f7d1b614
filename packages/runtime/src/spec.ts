/** Generation of the OCI runtime spec (config.json, spec 1.0.2) for a build container. */

/** Capability names in bit order (linux/capability.h). */
const CAPABILITY_BITS: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_DAC_READ_SEARCH',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_LINUX_IMMUTABLE',
  'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST',
  'CAP_NET_ADMIN',
  'CAP_NET_RAW',
  'CAP_IPC_LOCK',
  'CAP_IPC_OWNER',
  'CAP_SYS_MODULE',
  'CAP_SYS_RAWIO',
  'CAP_SYS_CHROOT',
  'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT',
  'CAP_SYS_ADMIN',
  'CAP_SYS_BOOT',
  'CAP_SYS_NICE',
  'CAP_SYS_RESOURCE',
  'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG',
  'CAP_MKNOD',
  'CAP_LEASE',
  'CAP_AUDIT_WRITE',
  'CAP_AUDIT_CONTROL',
  'CAP_SETFCAP',
  'CAP_MAC_OVERRIDE',
  'CAP_MAC_ADMIN',
  'CAP_SYSLOG',
  'CAP_WAKE_ALARM',
  'CAP_BLOCK_SUSPEND',
  'CAP_AUDIT_READ',
  'CAP_PERFMON',
  'CAP_BPF',
  'CAP_CHECKPOINT_RESTORE',
]

const LXC_DROPPED = new Set(['CAP_MAC_ADMIN', 'CAP_MAC_OVERRIDE', 'CAP_SYS_TIME', 'CAP_SYS_MODULE', 'CAP_SYS_RAWIO'])

/** Upstream builds run under LXC's defaults: root with every capability except the five LXC's
 *  common.conf drops (mac_admin, mac_override, sys_time, sys_module, sys_rawio). Build scripts
 *  written for upstream rely on that (dpkg/apt chown, mknod, setcap, mount a tmpfs, chattr), so the
 *  same set is kept here rather than Docker's narrower default. */
export const BUILD_CAPABILITIES: readonly string[] = Object.freeze(CAPABILITY_BITS.filter((c) => !LXC_DROPPED.has(c)))

/** The capabilities in a CapBnd-style hex mask (from /proc/self/status). */
export function capabilitiesInMask(hexMask: string): Set<string> {
  const mask = BigInt(`0x${hexMask.trim()}`)
  return new Set(CAPABILITY_BITS.filter((_, bit) => (mask >> BigInt(bit)) & 1n))
}

/** Docker's defaults. */
export const MASKED_PATHS: readonly string[] = Object.freeze([
  '/proc/asound',
  '/proc/acpi',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
])

export const READONLY_PATHS: readonly string[] = Object.freeze([
  '/proc/bus',
  '/proc/fs',
  '/proc/irq',
  '/proc/sys',
  '/proc/sysrq-trigger',
])

export interface SpecMount {
  destination: string
  type: string
  source: string
  options: string[]
}

export interface SpecInput {
  rootfs: string
  args: readonly string[]
  env: readonly string[]
  cwd: string
  hostname: string
  terminal: boolean
  user: { uid: number; gid: number }
  nofile: { soft: number; hard: number }
  /** Mounts after the standard ones, in mount order. */
  extraMounts: readonly SpecMount[]
  /** Granted capabilities (BUILD_CAPABILITIES limited to what this process can hand on). */
  capabilities: readonly string[]
  /** This process runs in a user namespace of its own (an unprivileged build): see sysfsMount. */
  inUserNamespace?: boolean
}

/** Destinations of the mounts every build container gets; their mount points are part of the rootfs. */
export const STANDARD_MOUNT_POINTS: readonly string[] = Object.freeze(['/proc', '/dev', '/sys'])

export function bindMount(source: string, dest: string, readonly: boolean): SpecMount {
  return { destination: dest, type: 'bind', source, options: ['rbind', readonly ? 'ro' : 'rw'] }
}

/** A fresh read-only sysfs rather than upstream's rw rbind of the host /sys: the host's cgroup tree
 *  and device attributes stay out of reach of a build script. In a user namespace the kernel
 *  mounts sysfs only for the owner of the network namespace, and builds share the host's network:
 *  there the host's /sys is bound read-only, as rootless runtimes do; what it shows is what the
 *  user can see anyway. */
function sysfsMount(inUserNamespace: boolean): SpecMount {
  const options = ['nosuid', 'noexec', 'nodev', 'ro']
  return inUserNamespace
    ? { destination: '/sys', type: 'bind', source: '/sys', options: ['rbind', ...options] }
    : { destination: '/sys', type: 'sysfs', source: 'sysfs', options }
}

export function buildSpec(input: SpecInput): Record<string, unknown> {
  const caps = [...input.capabilities]
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: input.terminal,
      user: { uid: input.user.uid, gid: input.user.gid },
      args: [...input.args],
      env: [...input.env],
      cwd: input.cwd,
      // No inheritable or ambient set: a non-root `user` gets no capabilities across exec.
      capabilities: { bounding: caps, effective: caps, permitted: caps },
      rlimits: [{ type: 'RLIMIT_NOFILE', soft: input.nofile.soft, hard: input.nofile.hard }],
      noNewPrivileges: false,
    },
    root: { path: input.rootfs, readonly: false },
    hostname: input.hostname,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      // runc fills a tmpfs /dev with null, zero, full, random, urandom, tty, ptmx and the fd links.
      {
        destination: '/dev',
        type: 'tmpfs',
        source: 'tmpfs',
        options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'],
      },
      {
        destination: '/dev/pts',
        type: 'devpts',
        source: 'devpts',
        options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
      },
      // No size limit, as LXC's /dev/shm: builds (python multiprocessing, compilers) use it freely.
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'nodev', 'mode=1777'] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      sysfsMount(input.inUserNamespace === true),
      ...input.extraMounts,
    ],
    linux: {
      // No cgroupsPath: runc puts the container in /<id> of each hierarchy and removes it on exit.
      // No resource limits; the device rules are LXC's: mknod of anything, use of the usual nodes.
      resources: {
        devices: [
          { allow: false, access: 'rwm' },
          { allow: true, type: 'c', access: 'm' },
          { allow: true, type: 'b', access: 'm' },
          ...(
            [
              [1, 3],
              [1, 5],
              [1, 7],
              [1, 8],
              [1, 9],
              [5, 0],
              [5, 1],
              [5, 2],
              [10, 200],
              [10, 229],
            ] as const
          ).map(([major, minor]) => ({ allow: true, type: 'c', major, minor, access: 'rwm' })),
          { allow: true, type: 'c', major: 136, access: 'rwm' },
        ],
      },
      // No network namespace: builds share the host network, as upstream (lxc.net.0.type=none).
      namespaces: [{ type: 'pid' }, { type: 'mount' }, { type: 'uts' }, { type: 'ipc' }],
      maskedPaths: [...MASKED_PATHS],
      readonlyPaths: [...READONLY_PATHS],
      seccomp: seccompProfile(),
    },
  }
}

/** LXC's default seccomp policy: everything allowed except loading kernels and modules, forced
 *  unmounts, and open_by_handle_at (which, with CAP_DAC_READ_SEARCH, reaches files outside the rootfs). */
function seccompProfile(): Record<string, unknown> {
  const arches =
    process.arch === 'x64'
      ? ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']
      : process.arch === 'arm64'
        ? ['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM']
        : []
  const EPERM = 1
  const MNT_FORCE = 1
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    ...(arches.length > 0 ? { architectures: arches } : {}),
    syscalls: [
      {
        names: ['kexec_load', 'kexec_file_load', 'open_by_handle_at', 'init_module', 'finit_module', 'delete_module'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: EPERM,
      },
      {
        names: ['umount2'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: EPERM,
        args: [{ index: 1, value: MNT_FORCE, valueTwo: MNT_FORCE, op: 'SCMP_CMP_MASKED_EQ' }],
      },
    ],
  }
}
