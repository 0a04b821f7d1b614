/** A FIFO async mutex. */
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
