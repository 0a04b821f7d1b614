/** biome-ignore-all lint/suspicious/noTemplateCurlyInString: stacker placeholders (${{X}}, ${X}) are the subject of these tests */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { memoryLogger, StackerError } from '@stacker/core'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { loadStackerfile, loadStackerfiles, orderLines } from '../src/index.js'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stackerfile-load-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

async function write(rel: string, text: string): Promise<string> {
  const p = join(dir, rel)
  await mkdir(dirname(p), { recursive: true })
  await writeFile(p, text)
  return p
}

const opts = { substitutions: [] as string[] }

async function loadError(paths: string[]): Promise<StackerError> {
  const e = await loadStackerfiles(paths, opts).catch((x: unknown) => x)
  if (!(e instanceof StackerError)) throw new Error(`expected a StackerError, got ${String(e)}`)
  return e
}

describe('loadStackerfile', () => {
  it('substitutes, then parses relative to the file directory', async () => {
    const p = await write('sub/stacker.yaml', '# ${{WHO}}\n${{NAME}}:\n  from: {type: scratch}\n  imports: [f]\n')
    const sf = await loadStackerfile(p, { substitutions: ['NAME=layer1', 'WHO=me'] })
    expect(sf.path).toBe(p)
    expect(sf.referenceDir).toBe(join(dir, 'sub'))
    expect(sf.text).toBe('# me\nlayer1:\n  from: {type: scratch}\n  imports: [f]\n')
    expect(sf.layers.get('layer1')!.imports[0]!.path).toBe(join(dir, 'sub/f'))
    expect(sf.layers.get('layer1')!.file).toBe(p)
  })

  it('a missing file', async () => {
    const p = join(dir, 'nope.yaml')
    await expect(loadStackerfile(p, opts)).rejects.toThrow(
      `couldn't read stacker file: open ${p}: no such file or directory`,
    )
  })

  it('honours os/arch defaults from the options', async () => {
    const p = await write('stacker.yaml', 'a:\n  from: {type: scratch}\n')
    const sf = await loadStackerfile(p, { substitutions: [], os: 'linux', arch: 'riscv64' })
    expect(sf.layers.get('a')!.arch).toBe('riscv64')
  })

  it('substitution errors carry the file position', async () => {
    const p = await write('stacker.yaml', 'a:\n  from: {type: ${{T}}}\n')
    const e = await loadStackerfile(p, opts).catch((x: unknown) => x)
    expect(e).toBeInstanceOf(StackerError)
    expect((e as StackerError).message).toBe('no value for substitution T')
    expect((e as StackerError).pos).toEqual({ file: p, line: 2, col: 16 })
  })

  describe('over http', () => {
    let server: Server
    let base: string
    beforeEach(async () => {
      server = createServer((req, res) => {
        if (req.url === '/stacker.yaml') {
          res.writeHead(200)
          res.end('remote:\n  from: {type: scratch}\n  imports: [rel]\n')
        } else {
          res.writeHead(404, 'Not Found')
          res.end('no')
        }
      })
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    })
    afterEach(async () => {
      await new Promise<void>((r) => server.close(() => r()))
    })

    it('fetches a URL and resolves relative paths against the cwd', async () => {
      const sf = await loadStackerfile(`${base}/stacker.yaml`, opts)
      expect(sf.path).toBe(`${base}/stacker.yaml`)
      expect(sf.referenceDir).toBe(process.cwd())
      expect(sf.layers.get('remote')!.imports[0]!.path).toBe(join(process.cwd(), 'rel'))
    })

    it('non-200 is an error', async () => {
      await expect(loadStackerfile(`${base}/missing.yaml`, opts)).rejects.toThrow(
        `stackerfile: couldn't download ${base}/missing.yaml: 404 Not Found`,
      )
    })

    it('a URL prerequisite', async () => {
      const p = await write(
        'stacker.yaml',
        `config:\n  prerequisites: ["${base}/stacker.yaml"]\nlocal:\n  from: {type: built, tag: remote}\n`,
      )
      const set = await loadStackerfiles([p], opts)
      expect(set.order.map((f) => f.path)).toEqual([`${base}/stacker.yaml`, p])
      expect(set.findLayer('remote')?.file).toBe(`${base}/stacker.yaml`)
    })
  })
})

describe('loadStackerfiles', () => {
  it('loads nested and absolute prerequisites and orders files', async () => {
    const s1 = await write('sub1/stacker.yaml', 'l1:\n  from: {type: scratch}\n')
    const s3 = await write('sub3/stacker.yaml', 'l3:\n  from: {type: scratch}\n')
    const s2 = await write(
      'sub2/stacker.yaml',
      `config:\n  prerequisites:\n    - ../sub1/stacker.yaml\n    - ${s3}\nl2:\n  from: {type: built, tag: l1}\n`,
    )
    const top = await write(
      'stacker.yaml',
      'config:\n  prerequisites: [sub2/stacker.yaml]\ntop:\n  from: {type: built, tag: l2}\n',
    )
    const set = await loadStackerfiles([top], opts)
    expect([...set.files.keys()].sort()).toEqual([s1, s2, s3, top].sort())
    expect(set.order.map((f) => f.path)).toEqual([s1, s3, s2, top])
    expect(orderLines(set)).toEqual([
      `0 build ${s1}: requires: []`,
      `1 build ${s3}: requires: []`,
      `2 build ${s2}: requires: [${s1} ${s3}]`,
      `3 build ${top}: requires: [${join(dir, 'sub2/stacker.yaml')}]`,
    ])
    expect(set.findLayer('l1')?.file).toBe(s1)
    expect(set.findLayer('nope')).toBeUndefined()
  })

  it('independent files are ordered by path, and a file given twice is loaded once', async () => {
    const b = await write('b/stacker.yaml', 'b:\n  from: {type: scratch}\n')
    const a = await write('a/stacker.yaml', 'a:\n  from: {type: scratch}\n')
    const set = await loadStackerfiles([b, a, b], opts)
    expect(set.order.map((f) => f.path)).toEqual([a, b])
  })

  it('a missing prerequisite', async () => {
    const top = await write('stacker.yaml', 'config:\n  prerequisites:\n    - nothere/stacker.yaml\n')
    const e = await loadError([top])
    expect(e.message).toBe(`couldn't find prerequisite ${join(dir, 'nothere/stacker.yaml')}`)
    expect(e.pos).toEqual({ file: top, line: 3, col: 7 })
  })

  it('a prerequisite cycle is an error naming it, not a hang', async () => {
    const a = await write(
      'a/stacker.yaml',
      'config:\n  prerequisites: [../b/stacker.yaml]\nla:\n  from: {type: scratch}\n',
    )
    const b = await write(
      'b/stacker.yaml',
      'config:\n  prerequisites: [../a/stacker.yaml]\nlb:\n  from: {type: scratch}\n',
    )
    const e = await loadError([a])
    expect(e.message).toBe(`prerequisite cycle: ${a} -> ${b} -> ${a}`)
    expect(e.pos).toEqual({ file: b, line: 2, col: 19 })
    const self = await write('self/stacker.yaml', 'config:\n  prerequisites: [stacker.yaml]\n')
    expect((await loadError([self])).message).toBe(`prerequisite cycle: ${self} -> ${self}`)
  })

  it('a diamond is not a cycle', async () => {
    await write('base/stacker.yaml', 'base:\n  from: {type: scratch}\n')
    await write(
      'l/stacker.yaml',
      'config:\n  prerequisites: [../base/stacker.yaml]\nl:\n  from: {type: built, tag: base}\n',
    )
    await write(
      'r/stacker.yaml',
      'config:\n  prerequisites: [../base/stacker.yaml]\nr:\n  from: {type: built, tag: base}\n',
    )
    const top = await write(
      'stacker.yaml',
      'config:\n  prerequisites: [l/stacker.yaml, r/stacker.yaml]\ntop:\n  from: {type: built, tag: l}\n',
    )
    const set = await loadStackerfiles([top], opts)
    expect(set.order.map((f) => f.path.slice(dir.length))).toEqual([
      '/base/stacker.yaml',
      '/l/stacker.yaml',
      '/r/stacker.yaml',
      '/stacker.yaml',
    ])
  })

  it('duplicate layer names across files', async () => {
    const a = await write('a/stacker.yaml', 'same:\n  from: {type: scratch}\n')
    const b = await write('b/stacker.yaml', 'other:\n  from: {type: scratch}\nsame:\n  from: {type: scratch}\n')
    const e = await loadError([a, b])
    expect(e.message).toBe(`duplicate layer name: both ${a} and ${b} have same`)
    expect(e.pos).toEqual({ file: b, line: 3, col: 1 })
  })

  it('errors inside a prerequisite point into that file', async () => {
    const bad = await write('bad/stacker.yaml', 'x:\n  from: {type: scratch}\n  nonsense: 1\n')
    const top = await write('stacker.yaml', 'config:\n  prerequisites: [bad/stacker.yaml]\n')
    const e = await loadError([top])
    expect(e.message).toBe('stackerfile: unknown directive nonsense')
    expect(e.pos).toEqual({ file: bad, line: 3, col: 3 })
  })

  it('the legacy import warning goes through the logger', async () => {
    const p = await write('stacker.yaml', 'x:\n  from: {type: scratch}\n  import: [a]\n')
    const logger = memoryLogger()
    await loadStackerfiles([p], { substitutions: [], logger })
    expect(logger.lines('warn')[0]).toMatch(
      /^'import' directive used in layer 'x' inside file '.*stacker.yaml' is deprecated/,
    )
  })
})
