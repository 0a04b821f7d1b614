/** JSON with object keys sorted at every level and no whitespace: the same value always gives the
 *  same bytes. Arrays keep their order. `undefined` members are dropped as JSON.stringify does. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value))
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys)
  if (value !== null && typeof value === 'object' && !ArrayBuffer.isView(value)) {
    const out: Record<string, unknown> = {}
    for (const k of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[k]
      if (v !== undefined) out[k] = sortKeys(v)
    }
    return out
  }
  return value
}

/** A byte count for people: `1.5 MiB` (binary units, the default) or `1.6 MB` (decimal units, as
 *  upstream's `inspect` prints sizes). Whole bytes stay whole: `512 B`. */
export function formatBytes(n: number, opts: { decimal?: boolean } = {}): string {
  const base = opts.decimal ? 1000 : 1024
  const units = opts.decimal ? ['B', 'kB', 'MB', 'GB', 'TB'] : ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (v >= base && i < units.length - 1) {
    v /= base
    i++
  }
  return i === 0 ? `${v} ${units[i]}` : `${v.toFixed(1)} ${units[i]}`
}
