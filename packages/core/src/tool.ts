/** What callers read of a finished tool. */
export interface ToolResult {
  exitCode: number | undefined
  stdout: string
  stderr: string
}

/**
 * Runs a tool to completion (never throws for a failed tool: see `exitCode`, undefined when it could
 * not start or was killed). execa is imported on the first call: loading it is a good part of the
 * start-up time of a command that never runs a tool (a no-op build).
 */
export async function runTool(
  file: string,
  args: readonly string[],
  options: { cwd?: string; stdin?: 'ignore'; env?: Record<string, string> } = {},
): Promise<ToolResult> {
  const m = await import('execa')
  const r = await m.execa(file, args, { ...options, reject: false })
  return { exitCode: r.exitCode, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') }
}
