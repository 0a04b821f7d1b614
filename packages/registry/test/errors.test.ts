import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isStackerError } from '@stacker/core'
import { OciLayout } from '@stacker/oci'
import { afterEach, describe, expect, it } from 'vitest'
import { isRetryable, OFFLINE_REASONS, parseImageRef, pullImage, RegistryClient } from '../src/index.js'

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function serve(status: number): Promise<string> {
  const server: Server = createServer((_req, res) => {
    res.writeHead(status, { 'Content-Type': 'application/json' })
    res.end(JSON.stringify({ errors: [{ code: 'X', message: 'the registry says no' }] }))
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())))
  return `127.0.0.1:${(server.address() as AddressInfo).port}`
}

async function failure(p: Promise<unknown>): Promise<unknown> {
  try {
    await p
  } catch (e) {
    return e
  }
  throw new Error('expected a failure')
}

describe('registry errors carry their detail', () => {
  it('an unreachable registry: reason unreachable, retryable, one of OFFLINE_REASONS', async () => {
    // A port that was just free: nothing listens on it.
    const host = await serve(200)
    await cleanups.pop()?.()
    const client = new RegistryClient(parseImageRef(`docker://${host}/x:1`), { insecure: true, retries: 0 })
    const e = await failure(client.getManifest('1'))
    expect(isStackerError(e, 'REGISTRY')).toBe(true)
    if (!isStackerError(e, 'REGISTRY')) return
    expect(e.detail).toEqual({ reason: 'unreachable', retryable: true })
    expect(OFFLINE_REASONS.has(e.detail?.reason ?? '')).toBe(true)
    expect(e.message).toBe(`pulling docker://${host}/x:1: connection refused`)
  })

  it('a status: the status, reason status, retryable for 5xx only; kept through pullImage', async () => {
    const five = await serve(503)
    const c5 = new RegistryClient(parseImageRef(`docker://${five}/x:1`), { insecure: true, retries: 0 })
    const e5 = await failure(c5.getManifest('1'))
    expect(isStackerError(e5, 'REGISTRY') && e5.detail).toEqual({ status: 503, reason: 'status', retryable: true })
    expect(isRetryable(e5)).toBe(true)

    const four = await serve(400)
    const dir = await mkdtemp(join(tmpdir(), 'stacker-reg-err-'))
    cleanups.push(() => rm(dir, { recursive: true, force: true }))
    const ref = parseImageRef(`docker://${four}/x:1`)
    const client = new RegistryClient(ref, { insecure: true, retries: 0 })
    const e4 = await failure(pullImage({ ref, layout: await OciLayout.open(dir, { create: true }), client }))
    expect(isStackerError(e4, 'REGISTRY') && e4.detail).toEqual({ status: 400, reason: 'status', retryable: false })
    expect(isRetryable(e4)).toBe(false)
    // One subject, not repeated by the layers that add context.
    expect((e4 as Error).message).toBe(`pulling ${ref}: the registry says no (400)`)
  })
})
