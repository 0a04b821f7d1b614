import { describe, expect, it } from 'vitest'
import { convert, convertError } from './helpers.js'

const BASE = 'FROM 127.0.0.1:5000/busybox:latest'

describe('FROM', () => {
  it('names the last stage ${{IMAGE}} and writes IMAGE: app, as upstream', async () => {
    const c = await convert('FROM busybox:1.36\n')
    expect(c.stackerYaml).toContain('"${{IMAGE:app}}":')
    expect(c.substitutions).toMatch(/^IMAGE: app$/m)
    const layers = c.load()
    expect([...layers.keys()]).toEqual(['app'])
    expect(layers.get('app')?.from).toMatchObject({ type: 'docker', url: 'docker://busybox:1.36', insecure: false })
    expect([...c.load({ IMAGE: 'other' }).keys()]).toEqual(['other'])
  })

  it('marks a registry on this machine insecure, as Docker treats it', async () => {
    const c = await convert(`${BASE}\n`)
    expect(c.load().get('app')?.from).toMatchObject({ insecure: true })
  })

  it('turns stages into layers: build_only, `built` on a stage, scratch', async () => {
    const c = await convert(
      `${BASE} AS Build\nRUN touch /x\nFROM build AS test\nRUN true\nFROM scratch\nCOPY --from=build /x /x\n`,
    )
    const layers = c.load()
    expect([...layers.keys()]).toEqual(['build', 'test', 'app'])
    expect(layers.get('build')?.buildOnly).toBe(true)
    expect(layers.get('test')?.from).toMatchObject({ type: 'built', tag: 'build' })
    expect(layers.get('app')?.from).toMatchObject({ type: 'scratch' })
    expect(layers.get('app')?.buildOnly).toBe(false)
    expect(c.messages).toContain(
      '3: stage test is not used by the last stage: Docker skips it, stacker builds it (as a build_only layer)',
    )
  })

  it('takes ARGs before FROM for the image, and --platform as os/arch', async () => {
    const c = await convert('ARG TAG=1.36\nFROM --platform=linux/arm64 busybox:${TAG}\n')
    const l = c.load().get('app')
    expect(l?.from?.url).toBe('docker://busybox:1.36')
    expect([l?.os, l?.arch]).toEqual(['linux', 'arm64'])
    expect(c.load({ TAG: '1.37' }).get('app')?.from?.url).toBe('docker://busybox:1.37')
    // The build platform is this machine's: nothing to write.
    const d = await convert('FROM --platform=$BUILDPLATFORM busybox\n')
    expect(d.stackerYaml).not.toMatch(/^\s+arch:/m)
  })
})

describe('ARG, ENV and RUN', () => {
  it('writes ARG defaults to the substitutions file and passes ARGs and ENV to RUN', async () => {
    const c = await convert(
      `ARG VERSION=1.0.0\n${BASE}\nARG VERSION\nENV V1 $VERSION\nENV V2=\${VERSION} PLAIN="a b"\nRUN echo $VERSION $V1\n`,
    )
    expect(c.substitutions).toMatch(/^VERSION: 1\.0\.0$/m)
    const l = c.load().get('app')
    expect(l?.environment).toEqual([
      ['V1', '1.0.0'],
      ['V2', '1.0.0'],
      ['PLAIN', 'a b'],
    ])
    expect(l?.buildEnv).toEqual([
      ['VERSION', '1.0.0'],
      ['V1', '1.0.0'],
      ['V2', '1.0.0'],
      ['PLAIN', 'a b'],
    ])
    // The RUN text is the Dockerfile's: the shell reads $VERSION from the environment.
    expect(l?.run.join('\n')).toContain(`exec /bin/sh -c 'echo $VERSION $V1'`)
    const o = c.load({ VERSION: '2.0' }).get('app')
    expect(o?.environment[0]).toEqual(['V1', '2.0'])
    expect(o?.buildEnv[0]).toEqual(['VERSION', '2.0'])
  })

  it('keeps ARG scope: a RUN before the ARG, or in another stage, does not see it', async () => {
    const c = await convert(`${BASE}\nRUN echo early\nARG LATE=x\nRUN echo $LATE\n`)
    const run = c.load().get('app')?.run.join('\n') ?? ''
    expect(run).toMatch(/echo early[^\n]*\n/)
    expect(run).toMatch(/unset LATE && exec \/bin\/sh -c 'echo early'/)
    expect(run).not.toMatch(/unset LATE && exec \/bin\/sh -c 'echo \$LATE'/)
  })

  it('exports an ENV that changes between RUN steps in each step', async () => {
    const c = await convert(`${BASE}\nENV A=1\nRUN echo $A\nENV A=2\nRUN echo $A\n`)
    const l = c.load().get('app')
    expect(l?.buildEnv).toEqual([])
    expect(l?.run.join('\n')).toContain("export A=1 && exec /bin/sh -c 'echo $A'")
    expect(l?.run.join('\n')).toContain("export A=2 && exec /bin/sh -c 'echo $A'")
    expect(l?.environment).toEqual([['A', '2']])
  })

  it('keeps $VAR that stacker would read as a placeholder (written \\x24)', async () => {
    const c = await convert(`${BASE}\nARG IMAGE_TAG=v1\nENV LIT='$IMAGE_TAG \${IMAGE}'\nRUN echo "$IMAGE_TAG"\n`)
    expect(c.stackerYaml).toContain('\\x24IMAGE_TAG')
    const l = c.load({ IMAGE_TAG: 'v2' }).get('app')
    expect(l?.environment).toEqual([['LIT', '$IMAGE_TAG ${IMAGE}']])
    expect(l?.run.join('\n')).toContain(`'echo "$IMAGE_TAG"'`)
  })

  it('keeps a literal ${{...}} and an ARG called IMAGE from stacker substitution', async () => {
    const c = await convert(`ARG IMAGE=busybox\nFROM \${IMAGE}\nENV T='\${{IMAGE}} $IMAGE'\n`)
    expect(c.messages).toContain(
      "0: the Dockerfile has a build argument IMAGE: the image's name is the substitution IMAGE_NAME",
    )
    const layers = c.load({ IMAGE: 'alpine', IMAGE_NAME: 'img' })
    expect([...layers.keys()]).toEqual(['img'])
    expect(layers.get('img')?.from?.url).toBe('docker://alpine')
    expect(layers.get('img')?.environment).toEqual([['T', '${{IMAGE}} $IMAGE']])
  })

  it('converts RUN in exec form, with SHELL, and here-documents', async () => {
    const c = await convert(
      `${BASE}\nRUN ["echo", "a b"]\nSHELL ["/bin/ash", "-eo", "pipefail", "-c"]\nRUN echo $0\nRUN <<EOF\necho one\necho two\nEOF\nRUN <<-'X'\n\t#!/bin/sh\n\techo script\nX\nRUN cat <<EOF > /f\nx\nEOF\n`,
    )
    const run = c.load().get('app')?.run.join('\n') ?? ''
    expect(run).toContain("exec echo 'a b'")
    expect(run).toContain("exec /bin/ash -eo pipefail -c 'echo $0'")
    expect(run).toContain("exec /bin/ash -eo pipefail -c 'echo one\necho two\n'")
    expect(run).toContain(`printf '%s' '#!/bin/sh\necho script\n' > "$_script"`)
    expect(run).toContain("exec /bin/ash -eo pipefail -c 'cat <<EOF > /f\nx\nEOF'")
  })

  it('honours the escape directive, line continuations and comments', async () => {
    const c = await convert(`# escape=\`\n${BASE}\n# a comment\nRUN echo a \`\n# inside\n    b\nENV P=C:\\dir\n`)
    const l = c.load().get('app')
    expect(l?.run.join('\n')).toContain(`'echo a     b'`)
    expect(l?.environment).toEqual([['P', 'C:\\dir']])
  })

  it('warns about RUN options it drops', async () => {
    const c = await convert(`${BASE}\nRUN --mount=type=cache,target=/root/.cache --network=none true\n`)
    expect(c.messages).toEqual(
      expect.arrayContaining([
        '2: RUN --mount=type=cache,target=/root/.cache: stacker has no cache mounts; the step runs without the cache',
        '2: RUN --network=none: stacker runs build steps with the host network; the option is dropped',
      ]),
    )
  })
})

describe('WORKDIR and USER', () => {
  it('runs later steps in the WORKDIR, creates it, and resolves relative paths against it', async () => {
    const c = await convert(`${BASE}\nWORKDIR /app\nWORKDIR sub\nCOPY f .\nRUN pwd\n`, { f: 'x' })
    const l = c.load().get('app')
    expect(l?.workingDir).toBe('/app/sub')
    expect(l?.imports).toMatchObject([{ dest: '/app/sub/f' }])
    const run = l?.run.join('\n') ?? ''
    expect(run).toContain('mkdir -p /app\n')
    expect(run).toContain('mkdir -p /app/sub\n')
    expect(run).toContain('(cd /app/sub && exec /bin/sh -c pwd)')
  })

  it('does not make a WORKDIR in a stage without RUN, and says so', async () => {
    const c = await convert('FROM scratch\nWORKDIR /data\nCOPY f /app/f\n', { f: 'x' })
    expect(c.load().get('app')?.run).toEqual([])
    expect(c.messages).toContain(
      '2: WORKDIR /data: the directory is not created (the stage has no RUN step to make it with; it exists only if the base image or a COPY makes it)',
    )
  })

  it('runs RUN as the USER and sets the config user', async () => {
    const c = await convert(`${BASE}\nUSER app:staff\nWORKDIR /home/app\nRUN id\nUSER root\nRUN id\n`)
    const l = c.load().get('app')
    expect(l?.runtimeUser).toBe('root')
    const run = l?.run.join('\n') ?? ''
    expect(run).toContain('stacker_user_exec() {')
    expect(run).toContain('[ -d /home/app ] || { mkdir -p /home/app && stacker_user_chown app:staff /home/app; }')
    expect(run).toContain('(cd /home/app && stacker_user_exec app:staff /bin/sh -c id)')
    expect(run).toContain('(cd /home/app && exec /bin/sh -c id)')
  })
})

describe('COPY and ADD', () => {
  const files = { 'app/main.go': 'package main', 'app/go.mod': 'module x', 'conf.ini': 'k=v' }

  it('imports files and directories with Docker placement, owned by root', async () => {
    const c = await convert(
      `${BASE}\nCOPY conf.ini /etc/conf.ini\nCOPY conf.ini /etc\nCOPY conf.ini app /opt/\nCOPY app /src\nCOPY --chown=1000 --chmod=0600 conf.ini /home/u/c\n`,
      files,
    )
    const imports = c
      .load()
      .get('app')
      ?.imports.map(({ source: _source, ...i }) => ({ ...i, path: i.path.slice(c.dir.length) }))
    expect(imports).toEqual([
      { path: '/conf.ini', dest: '/etc/conf.ini', uid: 0, gid: 0, pos: expect.anything() },
      { path: '/conf.ini', dest: '/etc/conf.ini', uid: 0, gid: 0, pos: expect.anything() },
      { path: '/conf.ini', dest: '/opt/conf.ini', uid: 0, gid: 0, pos: expect.anything() },
      { path: '/app/', dest: '/opt/', uid: 0, gid: 0, pos: expect.anything() },
      { path: '/app/', dest: '/src/', uid: 0, gid: 0, pos: expect.anything() },
      { path: '/conf.ini', dest: '/home/u/c', uid: 1000, gid: 1000, mode: 0o600, pos: expect.anything() },
    ])
  })

  it('starts a new layer for a COPY after a RUN, so the RUN never sees it', async () => {
    const c = await convert(`${BASE}\nCOPY app/go.mod /src/\nRUN cat /src/go.mod\nCOPY app /src\nRUN ls /src\n`, files)
    const layers = c.load()
    expect([...layers.keys()]).toEqual(['app.1', 'app'])
    expect(layers.get('app.1')?.buildOnly).toBe(true)
    expect(layers.get('app')?.from).toMatchObject({ type: 'built', tag: 'app.1' })
    expect(layers.get('app.1')?.imports).toHaveLength(1)
    expect(layers.get('app')?.imports).toHaveLength(1)
  })

  it('copies from stages and images with stacker:// imports', async () => {
    const c = await convert(
      `${BASE} AS build\nRUN true\nFROM scratch\nCOPY --from=build /out/app /usr/local/bin/\nCOPY --from=0 /etc/passwd /etc/passwd\nCOPY --from=busybox:1.36 /bin/busybox /bin/busybox\n`,
    )
    const layers = c.load()
    expect([...layers.keys()]).toEqual(['image-busybox-1-36', 'build', 'app'])
    expect(layers.get('image-busybox-1-36')).toMatchObject({ buildOnly: true, from: { url: 'docker://busybox:1.36' } })
    expect(layers.get('app')?.imports.map((i) => [i.path, i.dest])).toEqual([
      ['stacker://build/out/app', '/usr/local/bin/app'],
      ['stacker://build/etc/passwd', '/etc/passwd'],
      ['stacker://image-busybox-1-36/bin/busybox', '/bin/busybox'],
    ])
  })

  it('downloads ADD URLs with mode 0600, and the checksum as hash', async () => {
    const sum = 'a'.repeat(64)
    const c = await convert(`${BASE}\nADD --checksum=sha256:${sum} https://example.invalid/a/t.tgz /opt/\n`)
    expect(c.load().get('app')?.imports).toMatchObject([
      { path: 'https://example.invalid/a/t.tgz', dest: '/opt/t.tgz', mode: 0o600, hash: sum },
    ])
  })

  it('makes FROM scratch + ADD of a local rootfs archive a tar base, and extracts other archives in a step', async () => {
    const { gzipSync } = await import('node:zlib')
    const tar = Buffer.alloc(1024)
    tar.write('ustar', 257, 'latin1')
    const c = await convert('FROM scratch\nADD root.tgz /\nADD plain.tar /opt/\n', {
      'root.tgz': gzipSync(tar),
      'plain.tar': tar,
    })
    const layers = c.load()
    expect([...layers.keys()]).toEqual(['archive-root.tgz', 'app'])
    expect(layers.get('archive-root.tgz')?.imports.map((i) => i.dest)).toEqual(['/archive/root.tgz'])
    expect(layers.get('app')?.from).toMatchObject({ type: 'tar', url: 'stacker://archive-root.tgz/archive/root.tgz' })
    expect(layers.get('app')?.run.join('\n')).toContain(`tar -xf "/stacker/imports/$2" -C "$1"' sh /opt plain.tar`)
  })

  it('expands wildcards against the context, and warns', async () => {
    const c = await convert(`${BASE}\nCOPY app/*.go conf.* /dst/\n`, files)
    expect(
      c
        .load()
        .get('app')
        ?.imports.map((i) => i.dest),
    ).toEqual(['/dst/main.go', '/dst/conf.ini'])
    expect(c.messages).toContain(
      '2: COPY app/*.go: the wildcard was expanded now, to 1 path; files added to the context later are not imported',
    )
  })

  it('warns about what an import cannot say', async () => {
    const c = await convert(
      `${BASE}\nCOPY --chown=app:app conf.ini /c\nCOPY --chmod=u+x conf.ini /d\nCOPY ../x /e\n`,
      files,
    )
    expect(c.messages).toEqual([
      '2: COPY --chown=app:app: stacker imports take numeric ids, and names are looked up in the image; the files are owned by 0:0 (write --chown=UID:GID)',
      '3: COPY --chmod=u+x: only octal modes are converted; the files keep their modes',
      '4: COPY ../x: the path is outside the build context; Docker refuses it, and it is not converted',
    ])
  })
})

describe('image config', () => {
  it('maps LABEL, VOLUME, MAINTAINER, EXPOSE and the command', async () => {
    const c = await convert(
      `${BASE}\nLABEL a=b "c d"="e f"\nMAINTAINER someone\nVOLUME /data ["/x"]\nVOLUME ["/y", "/z"]\nEXPOSE 80 443/udp\nENTRYPOINT ["/bin/app"]\nCMD --serve\n`,
    )
    const l = c.load().get('app')
    expect(l?.labels).toEqual([
      ['a', 'b'],
      ['c d', 'e f'],
    ])
    expect(l?.annotations).toEqual([['org.opencontainers.image.authors', 'someone']])
    // Not JSON here: a word, whose quotes Docker removes.
    expect(l?.volumes).toEqual(['/data', '[/x]', '/y', '/z'])
    expect(l?.entrypoint).toEqual(['/bin/app'])
    expect(l?.cmd).toEqual(['/bin/sh', '-c', '--serve'])
    expect(l?.exposedPorts).toEqual(['80/tcp', '443/udp'])
    expect(c.messages.filter((m) => m.includes('EXPOSE'))).toEqual([])
  })

  it('EXPOSE: ranges expanded, protocols lower-cased, ARGs left to substitution, bad ports refused', async () => {
    const c = await convert(`${BASE}\nARG PORT=7000\nEXPOSE 8000-8002/UDP 80\nEXPOSE $PORT 80/tcp\n`)
    expect(c.load().get('app')?.exposedPorts).toEqual(['8000/udp', '8001/udp', '8002/udp', '80/tcp', '7000/tcp'])
    expect(c.load({ PORT: '7001/udp' }).get('app')?.exposedPorts).toContain('7001/udp')
    expect(await convertError(`${BASE}\nEXPOSE 80/http\n`)).toBe('DOCKERFILE: Dockerfile:2: Invalid proto: http')
    expect(await convertError(`${BASE}\nEXPOSE 0\n`)).toContain('invalid port "0" in EXPOSE')
  })

  it('follows Docker: ENTRYPOINT drops an inherited CMD, a later stage inherits the config', async () => {
    const c = await convert(
      `${BASE} AS base\nENV A=1\nLABEL l=1\nUSER 10\nWORKDIR /w\nCMD ["c"]\nFROM base\nENTRYPOINT echo e\n`,
    )
    const l = c.load().get('app')
    expect(l).toMatchObject({
      environment: [['A', '1']],
      labels: [['l', '1']],
      runtimeUser: '10',
      workingDir: '/w',
      entrypoint: ['/bin/sh', '-c', 'echo e'],
    })
    expect(l?.cmd).toBeUndefined()
    const d = await convert(`${BASE}\nCMD ["c"]\nENTRYPOINT ["e"]\n`)
    expect(d.load().get('app')).toMatchObject({ entrypoint: ['e'], cmd: ['c'] })
  })

  it('warns about what OCI images or stacker.yaml cannot hold', async () => {
    const c = await convert(`${BASE}\nSTOPSIGNAL SIGQUIT\nHEALTHCHECK CMD true\nONBUILD RUN true\n`)
    expect(c.messages).toEqual([
      "2: STOPSIGNAL SIGQUIT is not converted: stacker.yaml cannot set the image's stop signal",
      '3: HEALTHCHECK is not converted: OCI images and stacker.yaml have no health check',
      '4: ONBUILD RUN true is not converted: OCI images have no build triggers',
    ])
  })
})

describe('errors', () => {
  it.each([
    ['', 'DOCKERFILE: Dockerfile:1: No source image provided with `FROM`'],
    ['FROM busybox\nFOO bar\n', 'DOCKERFILE: Dockerfile:2: Unknown instruction: FOO'],
    ['FROM busybox\n\nCOPY a\n', 'DOCKERFILE: Dockerfile:3: COPY requires at least two arguments'],
    ['RUN true\nFROM busybox\n', 'DOCKERFILE: Dockerfile:1: No source image provided with `FROM`'],
    [
      'FROM busybox\nENV A="open\n',
      'DOCKERFILE: Dockerfile:2: failed to process "\\"open": unexpected end of statement while looking for matching double-quote',
    ],
    ['FROM busybox\nRUN\n', 'DOCKERFILE: Dockerfile:2: RUN requires at least one argument'],
    ['FROM busybox\nUSER a b\n', 'DOCKERFILE: Dockerfile:2: USER requires exactly one argument'],
    [
      'FROM busybox\nCOPY a b /c\n',
      'DOCKERFILE: Dockerfile:2: When using COPY with more than one source file, the destination must be a directory and end with a / or a \\',
    ],
  ])('%j', async (text, want) => {
    expect(await convertError(text)).toBe(want)
  })
})
