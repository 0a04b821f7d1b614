/** A FIFO async mutex: `run` calls execute one at a time, in call order. */
export class Mutex {
  #tail: Promise<void> = Promise.resolve()

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.#tail
    let release!: () => void
    this.#tail = new Promise<void>((r) => {
      release = r
    })
    try {
      await prev
      return await fn()
    } finally {
      release()
    }
  }
}

/** At most `n` holders at once; waiters are served in arrival order. */
export class Semaphore {
  #free: number
  readonly #waiters: Array<() => void> = []

  constructor(n: number) {
    if (!(n >= 1)) throw new RangeError(`a semaphore needs at least one slot, not ${n}`)
    this.#free = n
  }

  async acquire(): Promise<void> {
    if (this.#free > 0) {
      this.#free--
      return
    }
    await new Promise<void>((resolve) => this.#waiters.push(resolve))
  }

  release(): void {
    const next = this.#waiters.shift()
    if (next) next()
    else this.#free++
  }

  /** Runs `fn` holding a slot. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.acquire()
    try {
      return await fn()
    } finally {
      this.release()
    }
  }
}

/** One FIFO mutex per key; a key's state is dropped once nothing holds or waits for it. */
export class KeyedMutex<K> {
  readonly #tails = new Map<K, Promise<void>>()

  async run<T>(key: K, fn: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve()
    let release!: () => void
    const tail = new Promise<void>((r) => {
      release = r
    })
    this.#tails.set(key, tail)
    try {
      await prev
      return await fn()
    } finally {
      release()
      if (this.#tails.get(key) === tail) this.#tails.delete(key)
    }
  }
}

/** Concurrent calls for one key share one run of the work; the key is forgotten when it settles
 *  (success or failure), so a later call runs the work again. */
export class SingleFlight<K, V> {
  readonly #inflight = new Map<K, Promise<V>>()

  run(key: K, fn: () => Promise<V>): Promise<V> {
    const pending = this.#inflight.get(key)
    if (pending) return pending
    const p = fn().finally(() => {
      if (this.#inflight.get(key) === p) this.#inflight.delete(key)
    })
    this.#inflight.set(key, p)
    return p
  }

  /** The run in progress for `key`, if any. */
  pending(key: K): Promise<V> | undefined {
    return this.#inflight.get(key)
  }
}

/** Each key's work, run once and its result kept; a run that fails is forgotten, so that a later
 *  call for the key runs the work again. Concurrent calls share the run in progress. */
export class KeptResults<K, V> {
  readonly #runs = new Map<K, Promise<V>>()

  run(key: K, fn: () => Promise<V>): Promise<V> {
    const kept = this.#runs.get(key)
    if (kept) return kept
    const p = fn()
    this.#runs.set(key, p)
    p.catch(() => this.forget(key, p))
    return p
  }

  /** The kept (or running) result of `key`, if any. */
  get(key: K): Promise<V> | undefined {
    return this.#runs.get(key)
  }

  /** Forgets `key`'s result; with `only`, only while that is still the one kept. */
  forget(key: K, only?: Promise<V>): void {
    if (only === undefined || this.#runs.get(key) === only) this.#runs.delete(key)
  }

  /** Every kept or running result, forgetting them all. */
  takeAll(): Array<Promise<V>> {
    const all = [...this.#runs.values()]
    this.#runs.clear()
    return all
  }
}

/** Waits for every promise to settle (so that none is left running), then throws the first
 *  rejection in array order, else returns the values. Unlike Promise.all, the error reported does
 *  not depend on which promise failed first in time. */
export async function settleAll<T extends readonly unknown[] | []>(
  promises: T,
): Promise<{ -readonly [K in keyof T]: Awaited<T[K]> }> {
  const settled = await Promise.allSettled(promises)
  for (const r of settled) if (r.status === 'rejected') throw r.reason
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as {
    -readonly [K in keyof T]: Awaited<T[K]>
  }
}
