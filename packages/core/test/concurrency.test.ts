import { describe, expect, it } from 'vitest'
import { KeptResults, KeyedMutex, Semaphore, settleAll, SingleFlight } from '../src/index.js'

const later = <T>(ms: number, v: T, fail = false): Promise<T> =>
  new Promise((resolve, reject) => setTimeout(() => (fail ? reject(v) : resolve(v)), ms))

describe('settleAll', () => {
  it('returns the values in order', async () => {
    const [a, b] = await settleAll([later(5, 'a'), later(1, 2)])
    expect([a, b]).toEqual(['a', 2])
  })

  it('throws the first failure in array order, after every promise settled', async () => {
    let slowDone = false
    const slow = later(30, 'slow').then((v) => {
      slowDone = true
      return v
    })
    const err = await settleAll([later(20, new Error('first'), true), later(1, new Error('second'), true), slow]).catch(
      (e: Error) => e,
    )
    expect((err as Error).message).toBe('first')
    expect(slowDone).toBe(true)
  })
})

describe('SingleFlight and KeyedMutex', () => {
  it('share one run per key, and run one holder per key at a time', async () => {
    const flights = new SingleFlight<string, number>()
    let runs = 0
    const run = () => flights.run('k', async () => ++runs + (await later(5, 0)))
    expect(await Promise.all([run(), run()])).toEqual([1, 1])
    const mutex = new KeyedMutex<string>()
    const order: string[] = []
    await Promise.all(
      ['a', 'b'].map((n) =>
        mutex.run('k', async () => {
          order.push(`${n} in`)
          await later(5, 0)
          order.push(`${n} out`)
        }),
      ),
    )
    expect(order).toEqual(['a in', 'a out', 'b in', 'b out'])
  })
})

describe('KeptResults', () => {
  it('runs a key once and keeps its result; a failure is forgotten and tried again', async () => {
    const kept = new KeptResults<string, number>()
    let runs = 0
    const ok = () => kept.run('a', async () => ++runs)
    expect(await Promise.all([ok(), ok()])).toEqual([1, 1])
    expect(await ok()).toBe(1)
    let fails = 0
    const bad = () =>
      kept.run('b', async () => {
        fails++
        throw new Error('no')
      })
    await expect(bad()).rejects.toThrow('no')
    await expect(bad()).rejects.toThrow('no')
    expect(fails).toBe(2)
    // forget(key, only) leaves a newer result alone.
    const first = kept.get('a')
    kept.forget('a')
    const second = kept.run('a', async () => 10)
    kept.forget('a', first)
    expect(kept.get('a')).toBe(second)
    expect(await Promise.all(kept.takeAll())).toEqual([10])
    expect(kept.get('a')).toBeUndefined()
  })
})

describe('Semaphore', () => {
  it('lets at most n run at once, in arrival order', async () => {
    const s = new Semaphore(2)
    let running = 0
    let most = 0
    const started: number[] = []
    await Promise.all(
      [0, 1, 2, 3, 4].map((i) =>
        s.run(async () => {
          started.push(i)
          most = Math.max(most, ++running)
          await later(5, 0)
          running--
        }),
      ),
    )
    expect(most).toBe(2)
    expect(started).toEqual([0, 1, 2, 3, 4])
    expect(() => new Semaphore(0)).toThrow(RangeError)
  })
})

describe('SingleFlight.pending', () => {
  it('shows the run in progress only', async () => {
    const f = new SingleFlight<string, number>()
    const p = f.run('k', () => later(5, 1))
    expect(f.pending('k')).toBe(p)
    await p
    expect(f.pending('k')).toBeUndefined()
  })
})
