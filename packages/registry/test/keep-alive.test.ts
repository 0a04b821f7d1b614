// A client that is not closed must not keep the process alive: every response has to hand its
// socket back to the (unref'ing) keep-alive pool. An unread HEAD response once kept one referenced
// until the registry hung up, so `stacker build` sat a minute after its work was done.
import { Socket } from 'node:net'
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { sha256Digest } from '@stacker/core'
import { OciLayout } from '@stacker/oci'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { parseImageRef, pullImage, RegistryClient } from '../src/index.js'
import { buildImage, run, startRegistry, type TestRegistry, tempDir } from './helpers.js'

let reg: TestRegistry
let dir: string

beforeAll(async () => {
  reg = await startRegistry()
  dir = await tempDir('stacker-reg-keepalive-')
  const seed = await OciLayout.open(join(dir, 'seed'), { create: true })
  await buildImage(seed, 'v1', [{ 'hello.txt': 'hello\n' }])
  await run('skopeo', [
    'copy',
    '--insecure-policy',
    '--dest-tls-verify=false',
    `oci:${seed.dir}:v1`,
    `docker://${reg.host}/keep/alive:v1`,
  ])
}, 60_000)

afterAll(async () => {
  await reg?.stop()
  if (dir) await rm(dir, { recursive: true, force: true })
})

/** Sockets to the registry that would keep the event loop running. */
function referencedSockets(port: number): Socket[] {
  const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles()
  return handles.filter(
    (h): h is Socket =>
      h instanceof Socket &&
      h.remotePort === port &&
      (h as unknown as { _handle?: { hasRef?(): boolean } })._handle?.hasRef?.() === true,
  )
}

it('leaves no referenced socket behind after a pull and HEAD requests, without close()', async () => {
  const ref = parseImageRef(`docker://${reg.host}/keep/alive:v1`)
  const client = new RegistryClient(ref, { insecure: true, env: { HOME: '/nonexistent' } })
  const layout = await OciLayout.open(join(dir, 'out'), { create: true })
  const desc = await pullImage({ ref, layout, tag: 'x', client })
  expect(await client.headManifest('v1')).toMatchObject({ digest: desc.digest })
  expect(await client.hasBlob(sha256Digest('absent'))).toBe(false)
  const port = Number(reg.host.split(':')[1])
  // Sockets go back to the pool on the response's 'end', a few ticks after the call returns.
  for (let i = 0; i < 40 && referencedSockets(port).length > 0; i++) await sleep(50)
  expect(referencedSockets(port)).toEqual([])
})
