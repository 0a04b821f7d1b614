import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { StackerError, withTempDir, pathExists } from '@stacker/core'
import { buildEnvironment, runContainer, type BindMount } from '@stacker/runtime'
import { renderRunScript, type Layer } from '@stacker/stackerfile'
import { openChain, type BuildContext } from './context.js'

export const RUN_SCRIPT = '.stacker-run.sh'

/** The environment of a layer's build container (upstream's passthrough list, `build_env`, `STACKER_LAYER_NAME`). */
export function layerEnv(ctx: BuildContext, layer: Layer): string[] {
  return buildEnvironment({
    hostEnv: process.env,
    ...(layer.buildEnvPassthrough !== undefined ? { passthrough: layer.buildEnvPassthrough } : {}),
    buildEnv: layer.buildEnv,
    layerName: layer.name,
    ...(ctx.s.sourceDateEpoch !== undefined ? { sourceDateEpoch: ctx.s.sourceDateEpoch } : {}),
  })
}

export async function bindMounts(layer: Layer): Promise<BindMount[]> {
  const out: BindMount[] = []
  for (const b of layer.binds) {
    if (!(await pathExists(b.source)))
      throw new StackerError(
        'RUN_FAILED',
        `failed to bind mount ${JSON.stringify(b.source)} at ${JSON.stringify(b.dest)}: bind mount source ${JSON.stringify(b.source)} does not exist, refusing bind mount`,
        { pos: layer.pos },
      )
    out.push({ source: b.source, dest: b.dest })
  }
  return out
}

/** Mounts that make the staged imports visible: `/stacker/imports` read-only, or upstream's legacy
 *  places for layers written with the deprecated `import:`. Returns the script's path inside. */
function importMounts(layer: Layer, importsDir: string): { mounts: BindMount[]; script: string } {
  if (layer.wasLegacyImport)
    return {
      mounts: [
        { source: importsDir, dest: '/stacker', readonly: true },
        { source: importsDir, dest: '/.stacker/imports', readonly: true },
      ],
      script: `/stacker/${RUN_SCRIPT}`,
    }
  return {
    mounts: [{ source: importsDir, dest: '/stacker/imports', readonly: true }],
    script: `/stacker/imports/${RUN_SCRIPT}`,
  }
}

function outputSink(ctx: BuildContext, layer: Layer): (chunk: Uint8Array) => void {
  if (ctx.opts.jobs <= 1) return (c) => ctx.s.output(c)
  // Parallel builds: whole lines, each prefixed with the layer name.
  let partial = ''
  const sink = (c: Uint8Array) => {
    partial += Buffer.from(c).toString('utf8')
    const lines = partial.split('\n')
    partial = lines.pop() ?? ''
    if (lines.length) ctx.s.output(Buffer.from(lines.map((l) => `${layer.name}: ${l}\n`).join('')))
  }
  return Object.assign(sink, {
    flush: () => {
      if (partial) ctx.s.output(Buffer.from(`${layer.name}: ${partial}\n`))
      partial = ''
    },
  })
}

/** Runs the layer's `run` script in `rootfs` (the mounted build filesystem). */
export async function runScript(
  ctx: BuildContext,
  layer: Layer,
  opts: { rootfs: string; upper: string; importsDir: string },
): Promise<void> {
  await writeFile(join(opts.importsDir, RUN_SCRIPT), renderRunScript(layer.run), { mode: 0o755 })
  const im = importMounts(layer, opts.importsDir)
  const mounts = [...im.mounts, ...(await bindMounts(layer))]
  const env = layerEnv(ctx, layer)
  const onOutput = outputSink(ctx, layer)
  const r = await runContainer({
    rootfs: opts.rootfs,
    args: [im.script],
    env,
    mounts,
    stdio: 'pipe',
    onOutput,
    upperDir: opts.upper,
    stateDir: ctx.runtimeDir,
    id: layer.name,
    logger: ctx.logger,
    ...(ctx.s.signal !== undefined ? { signal: ctx.s.signal } : {}),
  })
  ;(onOutput as { flush?: () => void }).flush?.()
  if (r.exitCode !== 0) {
    const status = r.signal ? `signal: ${r.signal}` : `exit status ${r.exitCode}`
    if (ctx.opts.onRunFailure) {
      ctx.logger.info(`running ${ctx.opts.onRunFailure} in the container of ${layer.name} because run failed`)
      await runContainer({
        rootfs: opts.rootfs,
        args: [ctx.opts.onRunFailure],
        env,
        mounts,
        stdio: 'inherit',
        upperDir: opts.upper,
        stateDir: ctx.runtimeDir,
        id: `${layer.name}-fail`,
        logger: ctx.logger,
      })
    }
    throw new StackerError(
      'RUN_FAILED',
      `run commands failed for image ${JSON.stringify(layer.name)} in ${JSON.stringify(layer.file)}: execute failed: ${status}`,
    )
  }
}

/** Runs `generate_labels` in a throwaway snapshot of the finished layer; every file the script writes
 *  into /stacker/oci-labels becomes a label. Only PATH is set; no imports, build env or binds. */
export async function generateLabels(
  ctx: BuildContext,
  layer: Layer,
  chain: readonly string[],
): Promise<Array<[string, string]>> {
  return withTempDir(
    'stacker-labels-',
    async (dir) => {
      const labelsDir = join(dir, 'oci-labels')
      const scriptDir = join(dir, 'script')
      await mkdir(labelsDir)
      await mkdir(scriptDir)
      await writeFile(join(scriptDir, RUN_SCRIPT), renderRunScript(layer.generateLabels), { mode: 0o755 })
      await openChain(ctx, chain)
      const snap = await ctx.store.snapshot(chain)
      try {
        const r = await runContainer({
          rootfs: snap.target,
          args: [`/stacker/label-script/${RUN_SCRIPT}`],
          env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
          mounts: [
            { source: labelsDir, dest: '/stacker/oci-labels' },
            { source: scriptDir, dest: '/stacker/label-script', readonly: true },
          ],
          stdio: 'pipe',
          onOutput: (c) => ctx.s.output(c),
          stateDir: ctx.runtimeDir,
          id: `${layer.name}-labels`,
          logger: ctx.logger,
        })
        if (r.exitCode !== 0)
          throw new StackerError(
            'RUN_FAILED',
            `generate_labels failed for image ${JSON.stringify(layer.name)} in ${JSON.stringify(layer.file)}: execute failed: exit status ${r.exitCode}`,
          )
      } finally {
        await snap.release()
      }
      const out: Array<[string, string]> = []
      for (const name of (await readdir(labelsDir)).sort())
        out.push([name, await readFile(join(labelsDir, name), 'utf8')])
      await rm(labelsDir, { recursive: true, force: true })
      return out
    },
    join(ctx.s.dirs.stackerDir),
  )
}
