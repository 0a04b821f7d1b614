import { describe, expect, it } from 'vitest'
import { KeyedMutex, settleAll, SingleFlight } from '../src/index.js'

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
