/**
 * Protocol version 1 between this extension and the kernel-side comm
 * (jupyter_sessionpool/comm.py). Every message is a JSON object.
 */
import { JSONObject } from '@lumino/coreutils';

/** The comm target name served by `%load_ext jupyter_sessionpool`. */
export const TARGET = 'jupyter_sessionpool';

/** The protocol version this extension speaks. */
export const VERSION = 1;

/** The pool actions a frontend may ask for. */
export type Action = 'interrupt' | 'restart' | 'release';

/**
 * One pooled kernel, as in `KernelStats.to_dict()` plus `rss`. A remote kernel
 * has no `pid` (nor `rss`); `location` says where a kernel runs, when known.
 */
export interface IKernelStats {
  kernel_id: string;
  pid: number | null;
  location?: string | null;
  state: 'starting' | 'idle' | 'busy' | 'dead' | 'stopping';
  session: string | null;
  executions: number;
  busy_since: number | null;
  last_used: number | null;
  rss: number | null;
}

/** A caller waiting for a kernel. */
export interface IWaiting {
  session: string | null;
  since: number;
}

/** The whole pool, as in `PoolStats.to_dict()`. */
export interface IPoolStats {
  kernel_name: string;
  max_kernels: number;
  min_idle: number;
  closed: boolean;
  kernels: IKernelStats[];
  waiting: IWaiting[];
  counters: { [name: string]: number };
}

/** A snapshot, stamped with the kernel's wall clock (seconds). */
export interface ISnapshot {
  type: 'snapshot';
  time: number;
  pool: IPoolStats;
}

/** The extension is loaded in the kernel, but it has no pool yet. */
export interface INoPool {
  type: 'no_pool';
}

/** The kernel's answer to one request. */
export interface IReply {
  type: 'reply';
  request_id: string | number | null;
  ok: boolean;
  error: string | null;
}

/** Every message the kernel sends on our own comm. */
export type KernelMessage = ISnapshot | INoPool | IReply;

/** Build an action request. */
export function request(
  action: Action,
  session: string,
  requestId: string
): JSONObject {
  return { version: VERSION, action, session, request_id: requestId };
}

/**
 * Check a kernel message's envelope; return it typed, or null when it is not
 * protocol version 1 (the fields inside a snapshot are trusted as sent).
 */
export function parseKernelMessage(data: unknown): KernelMessage | null {
  if (typeof data !== 'object' || data === null) {
    return null;
  }
  const msg = data as { version?: unknown; type?: unknown; pool?: unknown };
  if (msg.version !== VERSION) {
    return null;
  }
  switch (msg.type) {
    case 'snapshot':
      return typeof msg.pool === 'object' && msg.pool !== null
        ? (data as ISnapshot)
        : null;
    case 'no_pool':
    case 'reply':
      return data as KernelMessage;
    default:
      return null;
  }
}
