import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { memoryLogger, StackerError } from '@stacker/core'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { layerBuildOrder, loadStackerfiles, type StackerfileSet } from '../src/index.js'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stackerfile-order-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

async function setOf(files: Record<string, string>, main = 'stacker.yaml'): Promise<StackerfileSet> {
  for (const [rel, text] of Object.entries(files)) {
    await mkdir(dirname(join(dir, rel)), { recursive: true })
    await writeFile(join(dir, rel), text)
  }
  return loadStackerfiles([join(dir, main)], { substitutions: [] })
}

function orderOf(set: StackerfileSet, rel = 'stacker.yaml') {
  const logger = memoryLogger()
  const file = set.files.get(join(dir, rel))!
  try {
    return { names: layerBuildOrder(set, file, logger).map((l) => l.name), logger, error: undefined }
  } catch (e) {
    if (!(e instanceof StackerError)) throw e
    return { names: [], logger, error: e }
  }
}

describe('layerBuildOrder', () => {
  it('keeps file order for independent layers and moves dependents after what they need', async () => {
    const set = await setOf({
      'stacker.yaml': [
        'child:',
        '  from: {type: built, tag: parent}',
        'tarred:',
        '  from: {type: tar, url: "stacker://importer/out.tar"}',
        'importer:',
        '  from: {type: scratch}',
        '  imports: ["stacker://parent/file", "stacker://other/x"]',
        'parent:',
        '  from: {type: docker, url: "docker://busybox"}',
        'other:',
        '  from: {type: oci, url: "oci:dir:tag"}',
        '',
      ].join('\n'),
    })
    expect(orderOf(set).names).toEqual(['parent', 'other', 'child', 'importer', 'tarred'])
  })

  it('layers of prerequisites (transitively) count as built; tar urls that are not stacker:// never block', async () => {
    const set = await setOf({
      'base/stacker.yaml': 'base:\n  from: {type: scratch}\n',
      'mid/stacker.yaml': 'config:\n  prerequisites: [../base/stacker.yaml]\nmid:\n  from: {type: built, tag: base}\n',
      'stacker.yaml': [
        'config:',
        '  prerequisites: [mid/stacker.yaml]',
        'top:',
        '  from: {type: built, tag: base}',
        '  imports: ["stacker://mid/x"]',
        'tar:',
        '  from: {type: tar, url: "https://h/x.tar"}',
        '',
      ].join('\n'),
    })
    expect(orderOf(set).names).toEqual(['top', 'tar'])
  })

  it('a built base that is not a declared prerequisite does not resolve', async () => {
    const set = await setOf({
      'stacker.yaml': 'test:\n  from: {type: built, tag: notatag}\n',
    })
    const { error, logger } = orderOf(set)
    expect(error?.message).toBe("couldn't resolve some dependencies")
    expect(error?.code).toBe('DEPENDENCY')
    expect(error?.pos).toEqual({ file: join(dir, 'stacker.yaml'), line: 1, col: 1 })
    expect(logger.lines('error')).toEqual(["couldn't find dependencies for test: base layer notatag"])
  })

  it('lists every missing stacker:// import', async () => {
    const set = await setOf({
      'stacker.yaml': [
        'ok:',
        '  from: {type: scratch}',
        'test:',
        '  from: {type: docker, url: "docker://centos:latest"}',
        '  imports:',
        '    - stacker://foo/bar',
        '    - stacker://ok/fine',
        '    - stacker://baz/foo',
        '',
      ].join('\n'),
    })
    const { error, logger } = orderOf(set)
    expect(error?.message).toBe("couldn't resolve some dependencies")
    expect(logger.lines('error')).toEqual(["couldn't find dependencies for test: stacker://foo/bar, stacker://baz/foo"])
  })

  it('a cycle between layers cannot resolve', async () => {
    const set = await setOf({
      'stacker.yaml': [
        'a:',
        '  from: {type: built, tag: b}',
        'b:',
        '  from: {type: tar, url: "stacker://a/x.tar"}',
        '',
      ].join('\n'),
    })
    const { error, logger } = orderOf(set)
    expect(error?.message).toBe("couldn't resolve some dependencies")
    expect(logger.lines('error')).toEqual([
      "couldn't find dependencies for a: base layer b",
      "couldn't find dependencies for b: stacker://a/x.tar",
    ])
  })

  it('a layer without a base type', async () => {
    for (const body of ['  run: echo\n', '  from: {url: "docker://x"}\n']) {
      const set = await setOf({ 'stacker.yaml': `ok:\n  from: {type: scratch}\nnobase:\n${body}` })
      const { error } = orderOf(set)
      expect(error?.message).toBe('invalid layer: no base (from directive)')
      expect(error?.code).toBe('STACKERFILE')
      expect(error?.pos).toEqual({ file: join(dir, 'stacker.yaml'), line: 3, col: 1 })
    }
  })
})
