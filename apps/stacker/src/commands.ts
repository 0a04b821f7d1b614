import { availableParallelism, userInfo } from 'node:os'
import { isAbsolute, relative, resolve } from 'node:path'
import { type Command, Option } from 'commander'
import { StackerError } from '@stacker/core'
import type * as Builder from '@stacker/builder'
import type { Session } from '@stacker/builder'
import type { Renderer } from './log.js'
import type { GlobalFlags } from './main.js'
import { registerInternalGo } from './internal-go.js'
import { ChildExited, runInUserNamespace, usesStorage } from './userns.js'
import type * as Settings from './settings.js'

export interface CommandContext {
  renderer: Renderer
  flags: GlobalFlags
  version: string
  /** Aborted on SIGINT/SIGTERM. */
  signal: AbortSignal
  /** The command line after the executable, as given. */
  argv: readonly string[]
}

const collect = (v: string, prev: string[]) => [...prev, v]

// The builder and the settings reader (with everything they import) are most of the start-up time:
// they load only when a command is about to run, never for --version or --help.
let B: typeof Builder
let S: typeof Settings
async function loadModules(): Promise<void> {
  ;[B, S] = await Promise.all([import('@stacker/builder'), import('./settings.js')])
}

function session(ctx: CommandContext): Session {
  const dirs = S.resolveDirs(ctx.flags)
  return {
    dirs,
    logger: ctx.renderer.logger,
    debug: !!ctx.flags.debug,
    version: ctx.version,
    sourceDateEpoch: S.sourceDateEpoch(),
    output: (chunk) => process.stdout.write(chunk),
    interactive: !!process.stdin.isTTY,
    signal: ctx.signal,
  }
}

interface BuildFlags {
  stackerFile?: string
  cache: boolean
  substitute: string[]
  substituteFile?: string
  onRunFailure?: string
  shellFail?: boolean
  layerType: string[]
  verity: boolean
  squashfsVerity: boolean
  requireHash?: boolean
  orderOnly?: boolean
  annotationsNamespace: string
  jobs: string
  tarCompression: string
  stackerFilePattern?: string
  searchDir?: string
}

function addBuildFlags(cmd: Command): Command {
  return cmd
    .option('--no-cache', "don't use the previous build cache")
    .option('--substitute <KEY=VALUE>', 'variable to substitute in stackerfiles (repeatable)', collect, [])
    .option('--substitute-file <file>', 'YAML file of substitutions (KEY: value)')
    .option('--on-run-failure <command>', 'command to run inside the container if run fails (useful for inspection)')
    .option('--shell-fail', 'run a shell in the container if run fails (--on-run-failure=/bin/sh)')
    .option('--layer-type <type>', 'output layer type: tar, squashfs or erofs (repeatable; default tar)', collect, [])
    .option('--no-verity', "don't append dm-verity data to squashfs or erofs layers")
    .addOption(new Option('--no-squashfs-verity', 'alias of --no-verity').hideHelp())
    .option('--require-hash', 'require every remote import to have a hash')
    .option('--order-only', 'show the build order and exit')
    .option('--annotations-namespace <ns>', 'namespace of the annotations stacker adds', 'io.stackeroci')
    .option('-j, --jobs <n>', 'layers built at once', String(availableParallelism()))
    .option('--tar-compression <kind>', 'compression of tar layers: gzip, or zstd for runtimes that read it', 'gzip')
}

function buildOptions(f: BuildFlags, files: string[]) {
  if (f.shellFail && f.onRunFailure !== undefined && f.onRunFailure !== '/bin/sh')
    throw new StackerError('USAGE', `--shell-fail is incompatible with --on-run-failure=${f.onRunFailure}`)
  const jobs = Number.parseInt(f.jobs, 10)
  if (!Number.isInteger(jobs) || jobs < 1)
    throw new StackerError('USAGE', `invalid --jobs value ${JSON.stringify(f.jobs)}`)
  const onRunFailure = f.shellFail ? '/bin/sh' : f.onRunFailure
  return {
    stackerFiles: files,
    substitute: f.substitute,
    ...(f.substituteFile !== undefined ? { substituteFile: f.substituteFile } : {}),
    noCache: !f.cache,
    ...(onRunFailure !== undefined ? { onRunFailure } : {}),
    layerTypes: B.parseLayerTypes(f.layerType),
    verity: f.verity && f.squashfsVerity,
    requireHash: !!f.requireHash,
    orderOnly: !!f.orderOnly,
    annotationsNamespace: f.annotationsNamespace,
    jobs,
    tarCompression: B.parseTarCompression(f.tarCompression),
  }
}

async function searchFiles(dir: string | undefined, pattern: string | undefined): Promise<string[]> {
  const { findStackerfiles } = await import('@stacker/stackerfile')
  const files = await findStackerfiles(resolve(dir ?? '.'), pattern)
  // A relative search dir gives relative paths, so messages name files as the user would.
  return dir !== undefined && !isAbsolute(dir) ? files.map((f) => relative(process.cwd(), f)) : files
}

function loginName(): string | undefined {
  try {
    return userInfo().username
  } catch {
    return undefined
  }
}

/**
 * Before a command that uses the roots dir: refuses dirs another user's runs made (root cleaning
 * them excepted), then, for an ordinary user, runs the command in a user namespace instead of here
 * (ChildExited carries its status). Not again inside that namespace.
 */
async function prepareStorageCommand(ctx: CommandContext, cmd: Command): Promise<void> {
  if (ctx.flags.internalUserns || !usesStorage(cmd)) return
  const euid = process.geteuid?.() ?? 0
  // Only what these checks need: the builder loads in the namespace's process.
  const [{ checkStorageOwner }, { resolveDirs }] = await Promise.all([
    import('@stacker/overlay'),
    import('./settings.js'),
  ])
  const dirs = resolveDirs(ctx.flags)
  if (!(euid === 0 && cmd.name() === 'clean')) {
    await checkStorageOwner(dirs, euid, { userName: loginName() })
  }
  if (euid === 0) return
  for (const dir of [dirs.stackerDir, dirs.rootsDir, dirs.ociDir]) await requireWritable(dir)
  throw new ChildExited(await runInUserNamespace(ctx.argv, ctx.signal))
}

/** The namespace's root is the user on the host: a dir the user cannot make or write is no more
 *  writable there, and the way out is unpriv-setup. */
async function requireWritable(dir: string): Promise<void> {
  const { access, constants } = await import('node:fs/promises')
  const { dirname } = await import('node:path')
  let at = dir
  for (;;) {
    try {
      await access(at, constants.W_OK | constants.X_OK)
      return
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code
      if (code === 'ENOENT' && dirname(at) !== at) {
        at = dirname(at)
        continue
      }
      const user = loginName() ?? `uid ${process.geteuid?.()}`
      throw new StackerError(
        'USAGE',
        `${at} is not writable by ${user}, so ${dir} cannot be used: as root, run \`stacker unpriv-setup --username ${user}\` there (or choose dirs ${user} owns)`,
      )
    }
  }
}

export function registerCommands(program: Command, ctx: () => CommandContext): void {
  program.hook('preAction', (_program, cmd) => prepareStorageCommand(ctx(), cmd))
  program.hook('preAction', loadModules)
  addBuildFlags(
    program
      .command('build')
      .description('builds a new OCI image')
      .option('-f, --stacker-file <file>', 'the input stackerfile', 'stacker.yaml'),
  ).action(async (f: BuildFlags) => {
    const c = ctx()
    await B.build(session(c), buildOptions(f, [f.stackerFile ?? 'stacker.yaml']))
  })

  addBuildFlags(
    program
      .command('recursive-build')
      .description('finds stackerfiles in the search dir and builds them in dependency order')
      .option('-p, --stacker-file-pattern <regex>', 'regex of the stackerfile paths to build', '\\/stacker.yaml$')
      .option('-d, --search-dir <dir>', 'directory under which to search for stackerfiles', '.'),
  ).action(async (f: BuildFlags) => {
    const c = ctx()
    const files = await searchFiles(f.searchDir, f.stackerFilePattern)
    await B.build(session(c), buildOptions(f, files))
  })

  program
    .command('publish')
    .description('publishes OCI images to a registry or an OCI layout')
    .option('-f, --stacker-file <file>', 'the input stackerfile', 'stacker.yaml')
    .option('-p, --stacker-file-pattern <regex>', 'regex of the stackerfile paths to publish', '\\/stacker.yaml$')
    .option('-d, --search-dir <dir>', 'directory under which to search for stackerfiles')
    .option('--url <url>', 'destination: docker://host[:port]/path or oci:<layout dir>')
    .option('--username <user>', 'username for the registry')
    .option('--password <password>', 'password for the registry')
    .option('--skip-tls', 'skip TLS verification (and allow plain http)')
    .option('--tag <tag>', 'tag for the published images (repeatable)', collect, [])
    .option('--substitute <KEY=VALUE>', 'variable to substitute in stackerfiles (repeatable)', collect, [])
    .option('--substitute-file <file>', 'YAML file of substitutions (KEY: value)')
    .option('--show-only', 'show the images that would be published, publish nothing')
    .option('--force', 'publish layers even if they need to be rebuilt')
    .option('--layer-type <type>', 'layer type to publish (repeatable; default tar)', collect, [])
    .option('--image <name>', 'publish only this image (repeatable)', collect, [])
    .action(async (f: Record<string, unknown>) => {
      const c = ctx()
      const url = f.url as string | undefined
      if (!url) throw new StackerError('USAGE', '--url is a mandatory argument for publishing')
      const username = f.username as string | undefined
      const password = f.password as string | undefined
      if ((username === undefined) !== (password === undefined))
        throw new StackerError(
          'USAGE',
          `supply both username and password, or none of them, current values: '${username ?? ''}' '${password === undefined ? '' : '<redacted>'}'`,
        )
      const files = f.searchDir
        ? await searchFiles(f.searchDir as string, f.stackerFilePattern as string)
        : [f.stackerFile as string]
      await B.publish(session(c), {
        stackerFiles: files,
        url,
        ...(username !== undefined && password !== undefined ? { credentials: { username, password } } : {}),
        skipTls: !!f.skipTls,
        tags: f.tag as string[],
        substitute: f.substitute as string[],
        ...(f.substituteFile !== undefined ? { substituteFile: f.substituteFile as string } : {}),
        showOnly: !!f.showOnly,
        force: !!f.force,
        layerTypes: B.parseLayerTypes(f.layerType as string[]),
        images: f.image as string[],
      })
    })

  program
    .command('chroot')
    .alias('exec')
    .description('runs a command in a throwaway copy of a built layer')
    .argument('[tag]', 'the layer (default: the first layer of the stackerfile)')
    .argument('[cmd...]', 'the command to run (default /bin/sh)')
    .option('-f, --stacker-file <file>', 'the input stackerfile', 'stacker.yaml')
    .option('--substitute <KEY=VALUE>', 'variable to substitute in stackerfiles (repeatable)', collect, [])
    // Options after the tag belong to the command (`chroot img /bin/sh -c ...`).
    .passThroughOptions()
    .action(async (tag: string | undefined, cmd: string[], f: { stackerFile: string; substitute: string[] }) => {
      const c = ctx()
      const code = await B.chroot(session(c), {
        stackerFile: f.stackerFile,
        substitute: f.substitute,
        ...(tag !== undefined ? { tag } : {}),
        ...(cmd.length ? { cmd } : {}),
      })
      if (code !== 0) process.exitCode = code
    })

  program
    .command('grab')
    .description('copies a file out of a built layer into the current directory')
    .argument('<tag:path>', 'the layer and the path inside it')
    .option('-f, --stacker-file <file>', 'the input stackerfile', 'stacker.yaml')
    .option('--substitute <KEY=VALUE>', 'variable to substitute in stackerfiles (repeatable)', collect, [])
    .action(async (spec: string, f: { stackerFile: string; substitute: string[] }) => {
      const c = ctx()
      await B.grab(session(c), { spec, stackerFile: f.stackerFile, substitute: f.substitute, dest: process.cwd() })
    })

  program
    .command('inspect')
    .description('shows the layers, annotations and config of the built images')
    .argument('[tag]', 'one image (default: all)')
    .action(async (tag: string | undefined) => {
      const c = ctx()
      process.stdout.write(await B.inspect(session(c), tag))
    })

  program
    .command('clean')
    .description('removes the roots dir, the OCI output and the cache')
    .option('--all', 'no effect (kept for compatibility)')
    .action(async () => {
      await B.clean(session(ctx()))
    })

  program
    .command('check')
    .description('checks that this machine can build: overlay support and the tools stacker runs')
    .action(async () => {
      await B.check(session(ctx()))
    })

  program
    .command('gc')
    .description('removes unreferenced blobs and layer contents')
    .action(async () => {
      await B.gc(session(ctx()))
    })

  program
    .command('convert')
    .description('converts a Dockerfile into a stackerfile and its substitutions file')
    .option('-i, --docker-file <file>', 'the Dockerfile (its directory is the build context)', 'Dockerfile')
    .option('-o, --output-file <file>', 'the stackerfile to write', 'stacker.yaml')
    .option('-s, --substitute-file <file>', 'the substitutions file to write', 'stacker-subs.yaml')
    .action(async (f: { dockerFile: string; outputFile: string; substituteFile: string }) => {
      const { convertFiles } = await import('@stacker/convert')
      await convertFiles({
        dockerFile: f.dockerFile,
        outputFile: f.outputFile,
        substituteFile: f.substituteFile,
        logger: ctx().renderer.logger,
      })
    })

  program
    .command('unpriv-setup')
    .description('lets a user build without root: subordinate ids and the stacker, roots and oci dirs (run as root)')
    .option('--uid <uid>', 'the user id (default $SUDO_UID, or that of --username)')
    .option('--gid <gid>', 'the group id (default $SUDO_GID, or that of --username)')
    .option('--username <name>', 'the user name (default $SUDO_USER, or that of --uid)')
    .action(async (f: { uid?: string; gid?: string; username?: string }) => {
      const c = ctx()
      await B.unprivSetup({
        uid: f.uid,
        gid: f.gid,
        username: f.username,
        env: process.env,
        dirs: S.resolveDirs(c.flags),
        logger: c.renderer.logger,
      })
    })

  registerInternalGo(program, ctx, session)
}
