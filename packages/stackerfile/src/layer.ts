import { endianness } from 'node:os'
import type { Layer } from './model.js'

const GO_ARCH: Record<string, string> = {
  x64: 'amd64',
  arm64: 'arm64',
  ia32: '386',
  arm: 'arm',
  s390x: 's390x',
  riscv64: 'riscv64',
  loong64: 'loong64',
  mips: 'mips',
  mipsel: 'mipsle',
  ppc: 'ppc',
}

/** The Go (GOARCH) name of the host architecture: what upstream defaults `arch` to. */
export function hostGoArch(arch: string = process.arch): string {
  if (arch === 'ppc64') return endianness() === 'LE' ? 'ppc64le' : 'ppc64'
  return GO_ARCH[arch] ?? arch
}

/** The Go (GOOS) name of the host OS: what upstream defaults `os` to. */
export function hostGoOs(platform: string = process.platform): string {
  return platform === 'win32' ? 'windows' : platform
}

/**
 * The script upstream writes for `run` (and `generate_labels`): `#!/bin/sh -xe` first unless the
 * first element starts with `#!`, elements joined with newlines, a final newline. Empty input
 * gives '' (nothing to run).
 */
export function renderRunScript(lines: readonly string[]): string {
  if (lines.length === 0) return ''
  const shebang = lines[0]!.startsWith('#!') ? '' : '#!/bin/sh -xe\n'
  return `${shebang}${lines.join('\n')}\n`
}

/**
 * Everything that defines a layer, as a plain JSON-able value without positions, file or name
 * (the builder keys by name itself). Map-like directives keep file order, since it shows in the
 * image config. Absent optional values are left out, so adding nothing changes nothing.
 */
export function layerDefinition(layer: Layer): unknown {
  const def: Record<string, unknown> = {
    from: layer.from
      ? omitUndefined({
          type: layer.from.type,
          url: layer.from.url,
          tag: layer.from.tag,
          insecure: layer.from.insecure,
        })
      : null,
    imports: layer.imports.map((i) =>
      omitUndefined({ path: i.path, hash: i.hash, dest: i.dest, mode: i.mode, uid: i.uid, gid: i.gid }),
    ),
    overlayDirs: layer.overlayDirs.map((o) => ({ source: o.source, dest: o.dest })),
    run: [...layer.run],
    generateLabels: [...layer.generateLabels],
    buildEnv: layer.buildEnv.map(([k, v]) => [k, v]),
    environment: layer.environment.map(([k, v]) => [k, v]),
    labels: layer.labels.map(([k, v]) => [k, v]),
    annotations: layer.annotations.map(([k, v]) => [k, v]),
    volumes: [...layer.volumes],
    buildOnly: layer.buildOnly,
    binds: layer.binds.map((b) => ({ source: b.source, dest: b.dest })),
    os: layer.os,
    arch: layer.arch,
    wasLegacyImport: layer.wasLegacyImport,
    wasBom: layer.wasBom,
  }
  if (layer.cmd) def.cmd = [...layer.cmd]
  if (layer.entrypoint) def.entrypoint = [...layer.entrypoint]
  if (layer.fullCommand) def.fullCommand = [...layer.fullCommand]
  if (layer.buildEnvPassthrough) def.buildEnvPassthrough = [...layer.buildEnvPassthrough]
  if (layer.workingDir !== undefined) def.workingDir = layer.workingDir
  // Only when set, so that the keys of layers without it stay what they were.
  if (layer.exposedPorts.length) def.exposedPorts = [...layer.exposedPorts]
  if (layer.runtimeUser !== undefined) def.runtimeUser = layer.runtimeUser
  return def
}

function omitUndefined(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v
  return out
}
