// How registry failures become StackerErrors: one line naming what was being done (`pulling REF`),
// and a REGISTRY detail (status, reason, retryable) that callers act on instead of the text.
import {
  isStackerError,
  StackerError,
  type StackerErrorCode,
  type StackerErrorDetail,
  type StackerErrorOptions,
} from '@stacker/core'
import { readBody, type Response } from './http.js'

/**
 * Why a REGISTRY error happened (its detail's `reason`):
 * `unreachable` (connection refused, unknown host, no route, a proxy that cannot be reached or
 * refuses the tunnel), `timeout`, `connection-lost`, `tls`, `status` (an HTTP error status; see
 * `status`), `protocol` (the registry answered something this client cannot use), `blocked`
 * (registries.conf blocks the registry).
 */
export type RegistryReason = 'unreachable' | 'timeout' | 'connection-lost' | 'tls' | 'status' | 'protocol' | 'blocked'

/** The reasons that mean the registry could not be reached at all (a cached copy may stand in). */
export const OFFLINE_REASONS: ReadonlySet<string> = new Set<RegistryReason>(['unreachable', 'timeout'])

// The subject each error was made for (`pulling REF`), so a caller adding context can tell whether
// the message already names it without reading the message.
const subjects = new WeakMap<object, string>()

/** An error `<subject>: <text>`, remembered as being about `subject`. */
export function subjectError<C extends StackerErrorCode>(
  subject: string,
  code: C,
  text: string,
  opts: StackerErrorOptions<C> = {},
): StackerError<C> {
  const e = new StackerError(code, `${subject}: ${text}`, opts)
  subjects.set(e, subject)
  return e
}

/** The subject an error was made for by subjectError, if any. */
export function subjectOf(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null ? subjects.get(e) : undefined
}

/** A REGISTRY error about `subject` with its detail. */
export function registryError(
  subject: string,
  text: string,
  detail: StackerErrorDetail<'REGISTRY'>,
  opts: { hint?: string | undefined; cause?: unknown } = {},
): StackerError<'REGISTRY'> {
  return subjectError(subject, 'REGISTRY', text, { ...opts, detail })
}

/** A REGISTRY error for an answer the client cannot use. */
export function protocolError(subject: string, text: string): StackerError<'REGISTRY'> {
  return registryError(subject, text, { reason: 'protocol', retryable: false })
}

/** True for an error worth another try: a lost connection, a timeout, a 5xx or 429. */
export function isRetryable(e: unknown): boolean {
  return isStackerError(e, 'REGISTRY') && e.detail?.retryable === true
}

/** Statuses a registry (or a proxy in front of it) answers when trying again later may work. */
export function isRetryableStatus(status: number): boolean {
  return status === 429 || status === 500 || status === 502 || status === 503 || status === 504
}

/** `s` on one line, cut at `max` characters. */
export function oneLine(s: string, max = 200): string {
  const flat = s.replace(/\s+/g, ' ').trim()
  return flat.length > max ? `${flat.slice(0, max)}...` : flat
}

/** The error for a response with an unexpected status: the registry's own error message when it sent
 *  an error document, NOT_FOUND for 404, else REGISTRY with the status in its detail. `what` names
 *  the object (`blob sha256:...`), or is empty. */
export async function statusError(subject: string, res: Response, what: string): Promise<StackerError> {
  const status = res.statusCode ?? 0
  let message: string | undefined
  try {
    const body = await readBody(res, 64 * 1024)
    const errors = (JSON.parse(body.toString('utf8')) as { errors?: { message?: unknown }[] }).errors
    const m = errors?.[0]?.message
    if (typeof m === 'string' && m !== '') message = oneLine(m)
  } catch {
    // Not a registry error document (or a HEAD response): the status says enough.
  }
  message ??= oneLine(res.statusMessage || 'request failed')
  if (status === 404 && what.startsWith('blob ')) message = 'blob unknown'
  const text = `${what ? `${what}: ` : ''}${message} (${status})`
  if (status === 404) return subjectError(subject, 'NOT_FOUND', text)
  return registryError(subject, text, { status, reason: 'status', retryable: isRetryableStatus(status) })
}

const TLS_CODES = new Set([
  'EPROTO',
  'ERR_SSL_WRONG_VERSION_NUMBER',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
])

function errnoCode(e: unknown): string | undefined {
  const c = (e as { code?: unknown } | null)?.code
  return typeof c === 'string' ? c : undefined
}

/** Where a failed request went, for naming it in the error. */
export interface NetTarget {
  /** The host the request was for. */
  host: string
  /** The proxy it went through (`describeProxy` form, without credentials) and that proxy's host. */
  proxy?: { name: string; host: string } | undefined
}

/** The error for a request that failed below HTTP (socket, DNS, TLS, proxy). `what` prefixes the
 *  text (`reading blob sha256:...`). StackerErrors pass through. */
export function netError(subject: string, e: unknown, target: NetTarget, what?: string): StackerError {
  if (e instanceof StackerError) return e
  // A socket failure wrapped by the transport carries the socket's own error as its cause.
  const cause = (e as { cause?: unknown } | null)?.cause
  let code = errnoCode(e)
  if (code === 'UND_ERR_SOCKET' && errnoCode(cause) !== undefined) code = errnoCode(cause)
  const { host, proxy } = target
  let text: string
  let reason: RegistryReason = 'unreachable'
  let retryable = true
  let hint: string | undefined
  switch (code) {
    case 'ECONNREFUSED':
      text = 'connection refused'
      break
    case 'ENOTFOUND':
      text = `unknown host ${host}`
      retryable = false
      break
    case 'EAI_AGAIN':
      text = `unknown host ${host} (temporary DNS failure)`
      break
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      text = `host ${host} unreachable`
      break
    case 'ETIMEDOUT':
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
      text = 'timed out'
      reason = 'timeout'
      break
    case 'ECONNRESET':
    case 'EPIPE':
    case 'ECONNABORTED':
    case 'UND_ERR_SOCKET':
    case 'UND_ERR_CLOSED':
      text = 'connection lost'
      reason = 'connection-lost'
      break
    case 'UND_ERR_ABORTED':
      text = proxy ? `the proxy ${proxy.name} refused the tunnel` : 'request aborted'
      reason = proxy ? 'unreachable' : 'connection-lost'
      retryable = false
      break
    default:
      retryable = false
      if (code && (TLS_CODES.has(code) || code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS'))) {
        text = `TLS error: ${tlsReason(e as Error)}`
        reason = 'tls'
        hint = 'use --skip-tls for a registry without a verified certificate'
      } else {
        text = oneLine(e instanceof Error ? e.message : String(e))
        reason = 'protocol'
      }
  }
  // A failure to reach the proxy is not the registry's: say so, naming the proxy (never its credentials).
  if (proxy && (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN'))
    text = `proxy ${proxy.name}: ${text.replace(` ${host}`, ` ${proxy.host}`)}`
  return registryError(
    subject,
    `${what ? `${what}: ` : ''}${text}`,
    { reason, retryable },
    {
      cause: e,
      ...(hint ? { hint } : {}),
    },
  )
}

/** OpenSSL's reason, for the message only: node gives it in `reason` for certificate errors; a
 *  failed handshake (EPROTO) has it only inside its message, between the file-and-line noise. A
 *  plain-http server is named as such. */
function tlsReason(e: Error): string {
  const r = (e as { reason?: unknown }).reason
  const reason =
    typeof r === 'string' && r !== '' ? r : (/SSL routines:[^:]*:([^:]+):/.exec(e.message)?.[1] ?? oneLine(e.message))
  return reason === 'wrong version number' ? `${reason} (the server does not speak TLS)` : reason
}
