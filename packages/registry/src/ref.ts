import { type Digest, isDigest, StackerError } from '@stacker/core'

/** A reference to an image in a registry. `tag` defaults to `latest` when no digest is given. */
export interface ImageRef {
  /** The registry's name as written (`host[:port]`); Docker Hub is `docker.io`. */
  readonly registry: string
  readonly repository: string
  readonly tag?: string
  readonly digest?: Digest
  /** `docker://registry/repository[:tag][@digest]`. */
  toString(): string
}

/** Docker Hub's name in references and auth files, and the host that serves its API. */
export const DOCKER_HUB = 'docker.io'
const DOCKER_HUB_HOST = 'registry-1.docker.io'

const COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/
const HOST_RE =
  /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/

function invalid(url: string, why: string): StackerError {
  return new StackerError('USAGE', `invalid image reference ${JSON.stringify(url)}: ${why}`)
}

/**
 * Parses `docker://host[:port]/repo[:tag][@sha256:...]`, with or without `docker://`. A first
 * component without `.` or `:` and other than `localhost` is a Docker Hub repository, as in
 * containers/image (`busybox` is `docker.io/library/busybox`). Throws USAGE for anything else.
 */
export function parseImageRef(url: string): ImageRef {
  let rest = url
  if (rest.startsWith('docker://')) rest = rest.slice('docker://'.length)
  else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(rest)) throw invalid(url, 'only docker:// references name a registry')
  if (rest === '') throw invalid(url, 'empty reference')

  let digest: Digest | undefined
  const at = rest.indexOf('@')
  if (at >= 0) {
    const d = rest.slice(at + 1)
    if (!isDigest(d)) throw invalid(url, `invalid digest ${JSON.stringify(d)}`)
    digest = d
    rest = rest.slice(0, at)
  }

  let tag: string | undefined
  const slash = rest.lastIndexOf('/')
  const colon = rest.lastIndexOf(':')
  if (colon > slash) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    if (!TAG_RE.test(tag)) throw invalid(url, `invalid tag ${JSON.stringify(tag)}`)
  }

  let registry = DOCKER_HUB
  let repository = rest
  const first = rest.indexOf('/')
  if (first >= 0) {
    const head = rest.slice(0, first)
    if (head.includes('.') || head.includes(':') || head === 'localhost' || head.startsWith('[')) {
      registry = head
      repository = rest.slice(first + 1)
    }
  }
  if (!HOST_RE.test(registry)) throw invalid(url, `invalid registry ${JSON.stringify(registry)}`)
  if (registry === 'index.docker.io' || registry === DOCKER_HUB_HOST) registry = DOCKER_HUB
  if (registry === DOCKER_HUB && !repository.includes('/')) repository = `library/${repository}`
  if (repository === '' || !repository.split('/').every((c) => COMPONENT_RE.test(c))) {
    throw invalid(url, `invalid repository name ${JSON.stringify(repository)}`)
  }
  if (tag === undefined && digest === undefined) tag = 'latest'
  return makeRef(registry, repository, tag, digest)
}

/** An ImageRef built from parts (no validation beyond what the type says). */
export function makeRef(registry: string, repository: string, tag?: string, digest?: Digest): ImageRef {
  const text = `docker://${registry}/${repository}${tag !== undefined ? `:${tag}` : ''}${digest !== undefined ? `@${digest}` : ''}`
  const ref: { -readonly [K in keyof ImageRef]: ImageRef[K] } = { registry, repository, toString: () => text }
  if (tag !== undefined) ref.tag = tag
  if (digest !== undefined) ref.digest = digest
  return ref
}

/** What to ask the registry for: the digest when there is one, else the tag. */
export function refReference(ref: ImageRef): string {
  return ref.digest ?? ref.tag ?? 'latest'
}

/** The `host[:port]` that serves the registry's API. */
export function registryHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_HOST : registry
}
