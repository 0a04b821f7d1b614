import { mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type Descriptor, MediaTypes, OciLayout } from '@stacker/oci'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { TagWriter } from '../src/tags.js'

type Step = [tag: string, manifest: string]

describe('TagWriter', () => {
  let dir: string
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'stacker-tags-'))
  })
  afterEach(() => rm(dir, { recursive: true, force: true }))

  async function manifest(layout: OciLayout, text: string): Promise<Descriptor> {
    const b = await layout.putBlob(JSON.stringify({ schemaVersion: 2, text }))
    return {
      mediaType: MediaTypes.manifest,
      digest: b.digest,
      size: b.size,
      platform: { os: 'linux', architecture: 'amd64' },
    }
  }

  /** Two layouts in the same state: one gets every tag by setTag, the other through a TagWriter. */
  async function pair(name: string, start: Step[]): Promise<[OciLayout, OciLayout]> {
    const layouts: OciLayout[] = []
    for (const side of ['plain', 'writer']) {
      const l = await OciLayout.open(join(dir, name, side), { create: true })
      for (const [tag, m] of start) await l.setTag(tag, await manifest(l, m))
      layouts.push(l)
    }
    return layouts as [OciLayout, OciLayout]
  }

  async function run(
    name: string,
    start: Step[],
    steps: Step[],
  ): Promise<{ plain: string; writer: string; rewritten: boolean }> {
    const [plain, other] = await pair(name, start)
    const before = await stat(join(other.dir, 'index.json'))
    const w = new TagWriter(other)
    for (const [tag, m] of steps) {
      await plain.setTag(tag, await manifest(plain, m))
      await w.set(tag, await manifest(other, m))
    }
    await w.finish()
    const after = await stat(join(other.dir, 'index.json'))
    return {
      plain: await readFile(join(plain.dir, 'index.json'), 'utf8'),
      writer: await readFile(join(other.dir, 'index.json'), 'utf8'),
      rewritten: after.ino !== before.ino,
    }
  }

  const built: Step[] = [
    ['x', 'x'],
    ['a1', 'a1'],
    ['a2', 'a2'],
    ['b1', 'b1'],
  ]
  const again: Step[] = built.slice(1)

  it('leaves index.json alone when a build sets the tags it already has, in the same order', async () => {
    const r = await run('same', built, again)
    expect(r.rewritten).toBe(false)
    expect(r.writer).toBe(r.plain)
  })

  it('gives the index setTag gives in every other case', async () => {
    const cases: Array<[string, Step[], Step[]]> = [
      ['changed-first', built, [['a1', 'new'], ...again.slice(1)]],
      ['changed-middle', built, [again[0]!, ['a2', 'new'], again[2]!]],
      ['changed-last', built, [...again.slice(0, 2), ['b1', 'new']]],
      ['new-tag', built, [...again, ['c1', 'c1']]],
      ['fewer-tags', built, again.slice(0, 2)],
      ['other-order', built, [again[1]!, again[0]!, again[2]!]],
      ['foreign-after', [...built, ['y', 'y']], again],
      ['duplicate-before', [['a2', 'a2'], ...built], again],
      ['empty-index', [], again],
      ['same-tag-twice', built, [...again, again[0]!]],
    ]
    for (const [name, start, steps] of cases) {
      const r = await run(name, start, steps)
      expect(r.writer, name).toBe(r.plain)
    }
  })

  it('leaves a failed build with the index it had, every entry still valid', async () => {
    const [, other] = await pair('failed', built)
    const before = await readFile(join(other.dir, 'index.json'), 'utf8')
    const w = new TagWriter(other)
    await w.set(again[0]![0], await manifest(other, again[0]![1]))
    // No finish(): the build stopped here.
    expect(await readFile(join(other.dir, 'index.json'), 'utf8')).toBe(before)
  })
})
