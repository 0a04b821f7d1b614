// `stacker convert`: Dockerfiles written for these tests are converted, built offline on the busybox
// base (served by a local registry, as a Dockerfile's FROM names an image), and the images' config and
// files are checked against what the Dockerfile means. Where buildah is installed, the same Dockerfile
// built by `buildah bud` gives the same config fields and the same RUN results (reference 1.2;
// upstream's bats "convert").
import { execFileSync } from 'node:child_process'
import { lstat, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { execa } from 'execa'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  expectOk,
  fixtures,
  type OciImageConfig,
  projectsPerTest,
  type Registry,
  readConfig,
  readIndex,
  seedRegistry,
  stacker,
  startRegistry,
  type TempProject,
  umociUnpack,
} from './helpers/index.js'

const project = projectsPerTest({ checkMounts: true })
let reg: Registry
/** `<registry>/busybox:latest`, the FROM of every Dockerfile here. */
let BASE: string

beforeAll(async () => {
  reg = await startRegistry()
  await seedRegistry(fixtures().busyboxLayout, 'latest', reg.host, 'busybox')
  BASE = `${reg.host}/busybox:latest`
})
afterAll(async () => {
  await reg?.stop()
})

const BUILDAH = (() => {
  try {
    execFileSync('buildah', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
})()
const NO_BUILDAH = 'buildah is not installed: the comparison with `buildah bud` needs it (apt-get install buildah)'

/** Converts `ctx/Dockerfile` into `ctx/stacker.yaml` and `ctx/stacker-subs.yaml`. */
async function convert(p: TempProject): Promise<{ stderr: string; yaml: string; subs: string }> {
  const r = expectOk(
    await stacker(
      [
        'convert',
        '--docker-file',
        'ctx/Dockerfile',
        '--output-file',
        'ctx/stacker.yaml',
        '--substitute-file',
        'ctx/stacker-subs.yaml',
      ],
      { cwd: p.dir },
    ),
  )
  return {
    stderr: r.stderr,
    yaml: await readFile(p.path('ctx/stacker.yaml'), 'utf8'),
    subs: await readFile(p.path('ctx/stacker-subs.yaml'), 'utf8'),
  }
}

/** Builds the converted file from the project dir (outside the build context). */
async function build(p: TempProject, subs: Record<string, string> = {}): Promise<string> {
  const r = expectOk(
    await stacker(
      [
        'build',
        '-f',
        'ctx/stacker.yaml',
        '--substitute-file',
        'ctx/stacker-subs.yaml',
        ...Object.entries(subs).flatMap(([k, v]) => ['--substitute', `${k}=${v}`]),
      ],
      { cwd: p.dir },
    ),
  )
  return r.stdout
}

/** The config fields a Dockerfile sets, with an absent Cmd/Entrypoint and null alike. Env is sorted:
 *  buildah moves a variable the Dockerfile sets again (PATH) to the end, Docker and stacker keep its
 *  place (checked without buildah below). */
function fields(c: OciImageConfig): Record<string, unknown> {
  const cfg = c.config ?? {}
  const labels = { ...(cfg.Labels ?? {}) }
  delete labels['io.buildah.version']
  return {
    Env: [...(cfg.Env ?? [])].sort(),
    Entrypoint: cfg.Entrypoint ?? null,
    Cmd: cfg.Cmd ?? null,
    User: cfg.User ?? '',
    WorkingDir: cfg.WorkingDir ?? '',
    Labels: labels,
    Volumes: cfg.Volumes ?? {},
    ExposedPorts: cfg.ExposedPorts ?? {},
  }
}

/** Builds `ctx/Dockerfile` with `buildah bud` into an OCI layout and returns it (tag `latest`). */
async function buildah(p: TempProject, buildArgs: Record<string, string> = {}): Promise<string> {
  const store = ['--root', p.path('buildah/root'), '--runroot', p.path('buildah/run'), '--storage-driver', 'vfs']
  const bud = await execa(
    'buildah',
    [
      ...store,
      'bud',
      '--tls-verify=false',
      '--isolation',
      'chroot',
      // Docker's format: with OCI's, buildah ignores SHELL (the OCI config has no field for it), while
      // Docker uses SHELL during the build either way.
      '--format',
      'docker',
      ...Object.entries(buildArgs).flatMap(([k, v]) => ['--build-arg', `${k}=${v}`]),
      '-t',
      'localhost/converted',
      '-f',
      p.path('ctx/Dockerfile'),
      p.path('ctx'),
    ],
    { reject: false, all: true },
  )
  if (bud.exitCode !== 0) throw new Error(`buildah bud failed:\n${bud.all}`)
  const out = p.path('buildah/oci')
  const push = await execa('buildah', [...store, 'push', 'localhost/converted', `oci:${out}:latest`], {
    reject: false,
    all: true,
  })
  if (push.exitCode !== 0) throw new Error(`buildah push failed:\n${push.all}`)
  return out
}

/** Content, owner and mode of files of an unpacked image. */
async function files(rootfs: string, paths: readonly string[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  for (const f of paths) {
    const st = await lstat(join(rootfs, f))
    const body = st.isFile() ? (await readFile(join(rootfs, f), 'utf8')).trim() : ''
    out[f] = `${st.uid}:${st.gid} ${(st.mode & 0o7777).toString(8)} ${body}`
  }
  return out
}

describe('stacker convert', () => {
  it("runs upstream's convert flow offline: convert, build with the substitutions file, publish", async () => {
    const p = await project({
      'ctx/Dockerfile': [
        `FROM ${BASE}`,
        'VOLUME /out',
        'ARG VERSION=1.0.0',
        'MAINTAINER unknown',
        'ENV ENV_VERSION1 $VERSION',
        'ENV ENV_VERSION2=$VERSION',
        'ENV ENV_VERSION3=$\\{VERSION\\}',
        'ENV TEST_PATH="/usr/share/test/bin:/usr/bin" \\',
        '    TEST_PATHS_CONFIG="/etc/test/test.ini" \\',
        '    TEST_PATHS_DATA="/var/lib/test"',
        'ENV COMMIT_SHA=${COMMIT_SHA}',
        'RUN echo "version $VERSION"',
        'RUN echo $\\{VERSION\\}',
        'RUN echo ok > /ran',
        'ENTRYPOINT [ "/usr/local/bin/fetch-latest-releases.lua" ]',
        '',
      ].join('\n'),
    })
    const c = await convert(p)
    expect(c.subs).toMatch(/^IMAGE: app$/m)
    expect(c.subs).toMatch(/^VERSION: 1\.0\.0$/m)
    expect(c.stderr).toContain(
      'ctx/Dockerfile:11: ENV COMMIT_SHA: COMMIT_SHA is not set by this Dockerfile and is taken as empty',
    )
    const r = expectOk(
      await stacker(
        ['build', '-f', 'ctx/stacker.yaml', '--substitute-file', 'ctx/stacker-subs.yaml', '--substitute', 'IMAGE=app'],
        { cwd: p.dir },
      ),
    )
    expect(r.stdout).toContain('version 1.0.0')
    expect(r.stdout).toContain('${VERSION}')
    const cfg = await readConfig(p.path('oci'), 'app')
    expect(cfg.config?.Env).toEqual([
      'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      'ENV_VERSION1=1.0.0',
      'ENV_VERSION2=1.0.0',
      'ENV_VERSION3=${VERSION}',
      'TEST_PATH=/usr/share/test/bin:/usr/bin',
      'TEST_PATHS_CONFIG=/etc/test/test.ini',
      'TEST_PATHS_DATA=/var/lib/test',
      'COMMIT_SHA=',
    ])
    expect(fields(cfg)).toMatchObject({
      Entrypoint: ['/usr/local/bin/fetch-latest-releases.lua'],
      // The base's Cmd (/bin/sh) is dropped by ENTRYPOINT, as Docker does.
      Cmd: null,
      User: '',
      WorkingDir: '',
      Labels: {},
      Volumes: { '/out': {} },
    })
    expectOk(
      await stacker(
        [
          'publish',
          '-f',
          'ctx/stacker.yaml',
          '--substitute-file',
          'ctx/stacker-subs.yaml',
          '--substitute',
          'IMAGE=app',
          '--skip-tls',
          '--url',
          `docker://${reg.host}`,
          '--image',
          'app',
          '--tag',
          'latest',
        ],
        { cwd: p.dir },
      ),
    )
    const inspect = await execa('skopeo', [
      'inspect',
      '--tls-verify=false',
      '--config',
      `docker://${reg.host}/app:latest`,
    ])
    expect((JSON.parse(inspect.stdout) as OciImageConfig).config?.Env).toContain('ENV_VERSION1=1.0.0')
  })

  const goBuild = () =>
    [
      'ARG VERSION=1.2.3',
      `FROM ${BASE} AS build`,
      'ARG VERSION',
      'ENV GOPATH=/go CGO_ENABLED=0',
      'WORKDIR /src',
      'COPY go.mod ./',
      'RUN echo "deps of $(cat go.mod)" > /deps',
      'COPY . .',
      'RUN mkdir -p /out/bin && cp /bin/busybox /out/bin/app \\',
      ' && echo "$VERSION $GOPATH $(pwd) $(cat /deps)" > /out/build-info \\',
      ' && ls /src > /out/sources',
      '',
      '# The final stage has no shell, like a distroless image.',
      'FROM scratch',
      'ARG VERSION',
      'COPY --from=build /out/bin/app /app',
      'COPY --from=build --chown=65532:65532 /out/build-info /out/sources /home/nonroot/',
      'USER 65532:65532',
      'WORKDIR /home/nonroot',
      'LABEL org.opencontainers.image.version=$VERSION',
      'EXPOSE 8080',
      'ENTRYPOINT ["/app"]',
      'CMD ["echo", "hello"]',
      '',
    ].join('\n')
  const goFiles = () => ({ 'ctx/go.mod': 'module example.invalid/app\n', 'ctx/main.go': 'package main\n' })
  const goPaths = ['/app', '/home/nonroot/build-info', '/home/nonroot/sources']

  it('converts a multi-stage Go-style build with a distroless-style final stage', async () => {
    const p = await project({ 'ctx/Dockerfile': goBuild(), ...goFiles() })
    const c = await convert(p)
    expect(c.stderr).not.toContain('EXPOSE')
    expect(c.stderr).toContain('ctx/Dockerfile:8: COPY .: the directory holds the stackerfile')
    await build(p)
    // Only the last stage is tagged; the shell-less stage has no run script.
    expect(
      (await readIndex(p.path('oci'))).manifests.map((m) => m.annotations?.['org.opencontainers.image.ref.name']),
    ).toEqual(['app'])
    expect(c.yaml).not.toMatch(/"\$\{\{IMAGE:app\}\}":[\s\S]*\n {2}run:/)
    const cfg = await readConfig(p.path('oci'), 'app')
    expect(fields(cfg)).toEqual({
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      Entrypoint: ['/app'],
      Cmd: ['echo', 'hello'],
      User: '65532:65532',
      WorkingDir: '/home/nonroot',
      Labels: { 'org.opencontainers.image.version': '1.2.3' },
      Volumes: {},
      ExposedPorts: { '8080/tcp': {} },
    })
    const rootfs = await umociUnpack(p.path('oci'), 'app', p.path('unpacked'))
    const got = await files(rootfs, goPaths)
    expect(got['/home/nonroot/build-info']).toBe('65532:65532 644 1.2.3 /go /src deps of module example.invalid/app')
    expect(got['/home/nonroot/sources']).toContain('Dockerfile\ngo.mod\nmain.go')
    expect(got['/app']).toMatch(/^0:0 755 /)
    // The RUN steps ran in a layer that did not see the later COPY . . (Docker's order).
    await build(p, { VERSION: '2.0.0' })
    const again = await readConfig(p.path('oci'), 'app')
    expect(again.config?.Labels).toEqual({ 'org.opencontainers.image.version': '2.0.0' })
  })

  it('gives the Go-style build the config and files buildah gives it', async ({ skip }) => {
    skip(!BUILDAH, NO_BUILDAH)
    const p = await project({ 'ctx/Dockerfile': goBuild(), ...goFiles() })
    await convert(p)
    await build(p)
    const bh = await buildah(p)
    const theirs = await readConfig(bh, 'latest')
    expect(fields(await readConfig(p.path('oci'), 'app'))).toEqual(fields(theirs))
    expect(theirs.config?.ExposedPorts).toEqual({ '8080/tcp': {} })
    const ours = await umociUnpack(p.path('oci'), 'app', p.path('ours'))
    const bhRoot = await umociUnpack(bh, 'latest', p.path('theirs'))
    // buildah's context has no stacker.yaml: compare the build info, not the source listing.
    const paths = goPaths.filter((f) => f !== '/home/nonroot/sources')
    expect(await files(ours, paths)).toEqual(await files(bhRoot, paths))
  })

  const argEnv = () =>
    [
      'ARG BASE_TAG=latest',
      `FROM ${BASE.replace(/:latest$/, ':${BASE_TAG}')}`,
      'ARG GREETING=hello',
      'ARG BUILD_ONLY_SECRET=not-in-the-image',
      'ENV MESSAGE="$GREETING world" PATH=/opt/tools/bin:$PATH',
      'RUN printf "%s|%s|%s|%s\\n" "$GREETING" "$MESSAGE" "$BUILD_ONLY_SECRET" "$PATH" > /build-env',
      'ENV GREETING=from-env',
      'RUN echo "$GREETING" > /env-wins',
      'RUN echo "late=${LATE:-unset}" > /before-arg',
      'ARG LATE=late-default',
      'RUN echo "late=${LATE}" > /after-arg',
      'LABEL greeting=$GREETING message="${MESSAGE}"',
      '',
    ].join('\n')
  const argEnvPaths = ['/build-env', '/env-wins', '/before-arg', '/after-arg']

  it('keeps ARG and ENV apart: ARGs at build time only, ENV in the image and in later RUN steps', async () => {
    const p = await project({ 'ctx/Dockerfile': argEnv() })
    const c = await convert(p)
    expect(c.stderr).toContain("ctx/Dockerfile:5: ENV PATH: $PATH is the base image's in Docker")
    await build(p)
    const rootfs = await umociUnpack(p.path('oci'), 'app', p.path('unpacked'))
    const body = async (f: string) => (await readFile(join(rootfs, f), 'utf8')).trim()
    expect(await body('/build-env')).toBe(
      'hello|hello world|not-in-the-image|/opt/tools/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    )
    expect(await body('/env-wins')).toBe('from-env')
    expect(await body('/before-arg')).toBe('late=unset')
    expect(await body('/after-arg')).toBe('late=late-default')
    const cfg = await readConfig(p.path('oci'), 'app')
    expect(cfg.config?.Env).toEqual([
      'PATH=/opt/tools/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      'MESSAGE=hello world',
      'GREETING=from-env',
    ])
    expect(cfg.config?.Labels).toEqual({ greeting: 'from-env', message: 'hello world' })

    // --substitute is --build-arg.
    await build(p, { GREETING: 'hi', LATE: 'given' })
    const r2 = await umociUnpack(p.path('oci'), 'app', p.path('unpacked2'))
    expect((await readFile(join(r2, 'build-env'), 'utf8')).split('|').slice(0, 2)).toEqual(['hi', 'hi world'])
    expect((await readFile(join(r2, 'after-arg'), 'utf8')).trim()).toBe('late=given')
    expect((await readConfig(p.path('oci'), 'app')).config?.Env).toContain('MESSAGE=hi world')
  })

  it('gives the ARG/ENV build the config and files buildah gives it', async ({ skip }) => {
    skip(!BUILDAH, NO_BUILDAH)
    const p = await project({ 'ctx/Dockerfile': argEnv() })
    await convert(p)
    await build(p, { GREETING: 'hi' })
    const bh = await buildah(p, { GREETING: 'hi' })
    expect(fields(await readConfig(p.path('oci'), 'app'))).toEqual(fields(await readConfig(bh, 'latest')))
    const ours = await umociUnpack(p.path('oci'), 'app', p.path('ours'))
    const theirs = await umociUnpack(bh, 'latest', p.path('theirs'))
    expect(await files(ours, argEnvPaths)).toEqual(await files(theirs, argEnvPaths))
  })

  // buildah 1.28 does not apply SHELL to CMD and ENTRYPOINT (Docker does), so its build leaves it out.
  const commands = (shell = true) =>
    [
      `FROM ${BASE} AS base`,
      'CMD ["/bin/sh", "-c", "echo base"]',
      'USER nobody',
      '',
      'FROM base AS inherits',
      ...(shell ? ['SHELL ["/bin/sh", "-ec"]'] : []),
      'ENTRYPOINT echo "entry $0"',
      '',
      'FROM inherits',
      'RUN id -u > /tmp/uid',
      'CMD exec echo "shell form"',
      '',
    ].join('\n')

  it('follows Docker for CMD and ENTRYPOINT in shell and exec form, SHELL and inheritance between stages', async () => {
    const p = await project({ 'ctx/Dockerfile': commands() })
    await convert(p)
    await build(p)
    const cfg = await readConfig(p.path('oci'), 'app')
    expect(fields(cfg)).toMatchObject({
      Entrypoint: ['/bin/sh', '-ec', 'echo "entry $0"'],
      Cmd: ['/bin/sh', '-ec', 'exec echo "shell form"'],
      User: 'nobody',
    })
    const rootfs = await umociUnpack(p.path('oci'), 'app', p.path('unpacked'))
    expect((await readFile(join(rootfs, 'tmp/uid'), 'utf8')).trim()).toBe('65534')

    // Exec form, and an ENTRYPOINT that drops the CMD it inherits.
    await p.write(
      'ctx/Dockerfile',
      `FROM ${BASE} AS base\nCMD ["from-base"]\nFROM base\nENTRYPOINT ["/bin/echo", "exec"]\n`,
    )
    await convert(p)
    await build(p)
    expect(fields(await readConfig(p.path('oci'), 'app'))).toMatchObject({
      Entrypoint: ['/bin/echo', 'exec'],
      Cmd: null,
    })
  })

  it('gives CMD and ENTRYPOINT the config buildah gives them', async ({ skip }) => {
    skip(!BUILDAH, NO_BUILDAH)
    const p = await project({ 'ctx/Dockerfile': commands(false) })
    await convert(p)
    await build(p)
    const bh = await buildah(p)
    expect(fields(await readConfig(p.path('oci'), 'app'))).toEqual(fields(await readConfig(bh, 'latest')))
    const ours = await umociUnpack(p.path('oci'), 'app', p.path('ours'))
    const theirs = await umociUnpack(bh, 'latest', p.path('theirs'))
    expect(await files(ours, ['/tmp/uid'])).toEqual(await files(theirs, ['/tmp/uid']))
  })

  it('runs here-documents, RUN as a USER in its WORKDIR, and extracts an ADDed archive', async () => {
    const p = await project({
      'ctx/Dockerfile': [
        `FROM ${BASE}`,
        "RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group",
        'USER app',
        'WORKDIR /home/app',
        'COPY --chown=1000:1000 notes.txt ./',
        'RUN <<EOF',
        'id -u > uid',
        'pwd > cwd',
        'cat notes.txt > copy',
        'EOF',
        'RUN <<EOT',
        '#!/bin/sh',
        'echo "script as $(id -un)" > script',
        'EOT',
        'USER root',
        'ADD rootfs.tar /opt/extracted/',
        'COPY *.txt /glob/',
        '',
      ].join('\n'),
      'ctx/notes.txt': 'notes\n',
      'ctx/other.txt': 'other\n',
    })
    await execa('tar', ['-cf', p.path('ctx/rootfs.tar'), '-C', p.path('ctx'), 'notes.txt'])
    const c = await convert(p)
    expect(c.stderr).toContain('ctx/Dockerfile:16: ADD rootfs.tar: the archive is extracted by a run step')
    expect(c.stderr).toContain('ctx/Dockerfile:17: COPY *.txt: the wildcard was expanded now, to 2 paths')
    await build(p)
    const rootfs = await umociUnpack(p.path('oci'), 'app', p.path('unpacked'))
    expect(
      await files(rootfs, ['/home/app', '/home/app/uid', '/home/app/cwd', '/home/app/copy', '/home/app/script']),
    ).toEqual({
      '/home/app': '1000:1000 755 ',
      '/home/app/uid': '1000:1000 644 1000',
      '/home/app/cwd': '1000:1000 644 /home/app',
      '/home/app/copy': '1000:1000 644 notes',
      '/home/app/script': '1000:1000 644 script as app',
    })
    expect(await readFile(join(rootfs, 'opt/extracted/notes.txt'), 'utf8')).toBe('notes\n')
    expect((await readFile(join(rootfs, 'glob/other.txt'), 'utf8')).trim()).toBe('other')
    expect((await readConfig(p.path('oci'), 'app')).config?.User).toBe('root')
  })

  it('turns FROM scratch + ADD rootfs.tar.gz / into a tar base that builds from any directory', async () => {
    const p = await project({
      'ctx/Dockerfile': 'FROM scratch\nADD rootfs.tar.gz /\nRUN echo built > /built\nCMD ["/bin/sh"]\n',
      'ctx/rootfs.tar.gz': await readFile(fixtures().busyboxTar),
    })
    const c = await convert(p)
    expect(c.stderr).not.toContain('ADD')
    await build(p)
    const rootfs = await umociUnpack(p.path('oci'), 'app', p.path('unpacked'))
    expect(await readFile(join(rootfs, 'built'), 'utf8')).toBe('built\n')
    expect((await lstat(join(rootfs, 'bin/busybox'))).isFile()).toBe(true)
  })

  it('rejects an invalid Dockerfile with its line, and writes nothing', async () => {
    const p = await project({ 'ctx/Dockerfile': `FROM ${BASE}\nRUN true\nFROBNICATE now\n` })
    const r = await stacker(['convert', '-i', 'ctx/Dockerfile', '-o', 'ctx/stacker.yaml', '-s', 'ctx/subs.yaml'], {
      cwd: p.dir,
    })
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toBe('error: ctx/Dockerfile:3: Unknown instruction: FROBNICATE\n')
    await expect(lstat(p.path('ctx/stacker.yaml'))).rejects.toThrow()
    const missing = await stacker(['convert'], { cwd: p.dir })
    expect(missing.exitCode).toBe(1)
    expect(missing.stderr).toMatch(/^error: couldn't read Dockerfile Dockerfile: /)
  })
})
