import type { Platform } from './types.js'

const NODE_TO_OCI_ARCH: Readonly<Record<string, string>> = {
  x64: 'amd64',
  ia32: '386',
  arm64: 'arm64',
  arm: 'arm',
  ppc64: 'ppc64le',
  s390x: 's390x',
  riscv64: 'riscv64',
  loong64: 'loong64',
  mips: 'mips',
  mipsel: 'mipsle',
}

/** The OCI architecture name (GOARCH) for a Node `process.arch`. */
export function ociArchitecture(nodeArch: string = process.arch): string {
  return NODE_TO_OCI_ARCH[nodeArch] ?? nodeArch
}

/** This machine as an OCI platform; the OS is always linux since images are built for it. */
export function hostPlatform(): Platform {
  return { architecture: ociArchitecture(), os: 'linux' }
}

/** True when `candidate` satisfies `wanted`: os and architecture equal, variant equal if both have one. */
export function platformMatches(candidate: Platform | undefined, wanted: Platform): boolean {
  if (!candidate) return false
  if (candidate.os !== wanted.os || candidate.architecture !== wanted.architecture) return false
  return !(wanted.variant && candidate.variant && wanted.variant !== candidate.variant)
}
