import { execa } from 'execa'

export interface GitRepo {
  /** Commit id of HEAD. */
  head: string
  /** `git describe --tags` (what stacker's git_version annotation holds for a clean tree). */
  describe: string
}

async function git(dir: string, args: string[]): Promise<string> {
  const r = await execa(
    'git',
    [
      '-c',
      'user.name=stacker-e2e',
      '-c',
      'user.email=e2e@example.invalid',
      '-c',
      'commit.gpgsign=false',
      '-c',
      'tag.gpgsign=false',
      '-c',
      'init.defaultBranch=main',
      ...args,
    ],
    { cwd: dir, reject: false, all: true },
  )
  if (r.exitCode !== 0) throw new Error(`git ${args.join(' ')} in ${dir} failed:\n${r.all}`)
  return r.stdout.trim()
}

/**
 * Makes dir a throwaway git repository: commits everything in it and tags the commit (lightweight tag,
 * default `v1.0.0`). Files added later are untracked, which does not make the tree dirty for stacker.
 */
export async function initGitRepo(dir: string, opts: { tag?: string } = {}): Promise<GitRepo> {
  await git(dir, ['init', '-q'])
  await git(dir, ['add', '-A'])
  await git(dir, ['commit', '-q', '--allow-empty', '-m', 'fixture'])
  await git(dir, ['tag', opts.tag ?? 'v1.0.0'])
  return { head: await git(dir, ['rev-parse', 'HEAD']), describe: await git(dir, ['describe', '--tags']) }
}

/** Runs a git command in dir (with a fixed identity); returns trimmed stdout. Throws on failure. */
export async function gitIn(dir: string, args: string[]): Promise<string> {
  return git(dir, args)
}
