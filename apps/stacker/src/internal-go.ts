import type { Command } from 'commander'
import { StackerError } from '@stacker/core'
import type { Session } from '@stacker/builder'
import type { CommandContext } from './commands.js'

const builder = () => import('@stacker/builder')

function exactly(args: string[], n: number, what = ''): void {
  if (args.length !== n) throw new StackerError('USAGE', `wrong number of args${what ? ` for ${what}` : ''}`)
}

/** `--x-tls-verify=true|false`, as skopeo spells it. */
function tlsVerify(flag: string, value: string | undefined): boolean | undefined {
  if (value === undefined) return undefined
  if (value === 'true') return true
  if (value === 'false') return false
  throw new StackerError('USAGE', `invalid value ${JSON.stringify(value)} for --${flag}: expected true or false`)
}

/**
 * The hidden `internal-go` commands upstream's test suite and users' scripts call: `cp`, `chmod`,
 * `chown`, `check-aa-profile`, `testsuite-check-overlay`, `copy` and `atomfs mount|umount`.
 */
export function registerInternalGo(
  program: Command,
  ctx: () => CommandContext,
  session: (c: CommandContext) => Session,
): void {
  const internal = program.command('internal-go', { hidden: true }).description('internal helpers')

  internal.command('testsuite-check-overlay').action(async () => {
    const B = await builder()
    process.exitCode = await B.internalCheckOverlay(session(ctx()))
  })

  internal
    .command('cp')
    .description('copies a file, or a directory tree into DEST, keeping ownership, modes and times')
    .argument('[args...]', 'SRC DEST')
    .action(async (args: string[]) => {
      exactly(args, 2)
      await (await builder()).internalCp(args[0] as string, args[1] as string)
    })

  internal
    .command('chmod')
    .argument('[args...]', 'OCTAL PATH')
    .action(async (args: string[]) => {
      exactly(args, 2)
      await (await builder()).internalChmod(args[0] as string, args[1] as string)
    })

  internal
    .command('chown')
    .argument('[args...]', 'UID[:GID] PATH')
    .action(async (args: string[]) => {
      exactly(args, 2)
      await (await builder()).internalChown(args[0] as string, args[1] as string)
    })

  internal
    .command('check-aa-profile')
    .argument('[args...]', 'PROFILE')
    .action(async (args: string[]) => {
      const B = await builder()
      const profile = args[0] ? `: profile ${args[0]} not checked` : ''
      ctx().renderer.logger.info(`AppArmor is not used by this stacker${profile}`)
      process.exitCode = B.NO_APPARMOR_EXIT
    })

  internal
    .command('copy')
    .description('copies an image: oci:<layout>[:<ref>] or docker://host[:port]/repo[:tag|@digest], either way')
    .argument('[args...]', 'SRC DEST')
    .option('--src-tls-verify <bool>', 'verify the source registry (default: true except for a loopback registry)')
    .option(
      '--dest-tls-verify <bool>',
      'verify the destination registry (default: true except for a loopback registry)',
    )
    .option('--skip-tls', 'skip TLS verification (and allow plain http) on both sides')
    .action(async (args: string[], f: { srcTlsVerify?: string; destTlsVerify?: string; skipTls?: boolean }) => {
      exactly(args, 2)
      const src = f.skipTls ? false : tlsVerify('src-tls-verify', f.srcTlsVerify)
      const dest = f.skipTls ? false : tlsVerify('dest-tls-verify', f.destTlsVerify)
      await (await builder()).internalCopy(session(ctx()), {
        src: args[0] as string,
        dest: args[1] as string,
        ...(src !== undefined ? { srcTlsVerify: src } : {}),
        ...(dest !== undefined ? { destTlsVerify: dest } : {}),
      })
    })

  const atomfs = internal.command('atomfs').description('mounts squashfs/erofs images read-only')
  atomfs
    .command('mount')
    .argument('[args...]', 'TAG MOUNTPOINT')
    .action(async (args: string[]) => {
      exactly(args, 2, 'mount')
      const s = session(ctx())
      await (await builder()).atomfsMount({
        ociDir: s.dirs.ociDir,
        tag: args[0] as string,
        mountpoint: args[1] as string,
        logger: s.logger,
      })
    })
  atomfs
    .command('umount')
    .argument('[args...]', 'MOUNTPOINT')
    .action(async (args: string[]) => {
      exactly(args, 1, 'umount')
      await (await builder()).atomfsUmount({ mountpoint: args[0] as string, logger: ctx().renderer.logger })
    })
}
