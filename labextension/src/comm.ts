/**
 * One kernel's pool, seen through the `jupyter_sessionpool` comm.
 */
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  Action,
  IReply,
  ISnapshot,
  parseKernelMessage,
  request,
  TARGET,
  VERSION
} from './protocol';

/** What a kernel says about its pool. */
export type KernelPoolState =
  /** The kernel does not serve the comm (the extension is not loaded). */
  | { kind: 'unavailable' }
  /** The extension is loaded, but no pool has been made yet. */
  | { kind: 'empty' }
  /** The latest snapshot, and when it arrived (browser clock, ms). */
  | { kind: 'pool'; snapshot: ISnapshot; receivedAt: number };

/**
 * Follows one kernel connection: finds out whether the kernel serves the
 * comm target, opens a comm, keeps the latest state, and sends actions.
 *
 * Discovery never opens a comm to a target the kernel lacks (that would log
 * an error in the kernel): it looks for the kernel's beacon comm with
 * `comm_info`, and listens for the beacon opening later (`%load_ext`).
 */
export class PoolConnection implements IDisposable {
  constructor(kernel: Kernel.IKernelConnection) {
    this._kernel = kernel;
    kernel.registerCommTarget(TARGET, this._onBeacon);
    kernel.statusChanged.connect(this._onStatus, this);
    void this._discover();
  }

  /** The latest pool state of this kernel. */
  get state(): KernelPoolState {
    return this._state;
  }

  /** Emitted whenever `state` changes. */
  get stateChanged(): ISignal<this, KernelPoolState> {
    return this._stateChanged;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /**
   * Ask the kernel to interrupt, restart or release a session.
   * Resolves when the kernel confirms; rejects with the kernel's error.
   */
  act(action: Action, session: string): Promise<void> {
    const comm = this._comm;
    if (comm === null) {
      return Promise.reject(new Error('this kernel has no pool'));
    }
    const requestId = `${++this._requests}`;
    return new Promise<void>((resolve, reject) => {
      this._pending.set(requestId, reply =>
        reply.ok
          ? resolve()
          : reject(new Error(reply.error ?? 'the kernel refused'))
      );
      comm.send(request(action, session, requestId));
    });
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    const comm = this._comm;
    this._reset();
    Signal.clearData(this);
    this._kernel.statusChanged.disconnect(this._onStatus, this);
    this._kernel.removeCommTarget(TARGET, this._onBeacon);
    if (comm !== null && !comm.isDisposed && this._kernel.status !== 'dead') {
      comm.close().done.catch(() => undefined); // the kernel may be going away too
    }
  }

  private async _discover(): Promise<void> {
    let reply: KernelMessage.ICommInfoReplyMsg;
    try {
      reply = await this._kernel.requestCommInfo({ target_name: TARGET });
    } catch {
      return; // the kernel went away: it stays 'unavailable'
    }
    if (this._isDisposed) {
      return;
    }
    const content = reply.content;
    if (content.status === 'ok' && Object.keys(content.comms).length > 0) {
      this._open();
    }
  }

  private _open(): void {
    if (this._comm !== null || this._isDisposed) {
      return;
    }
    const comm = this._kernel.createComm(TARGET);
    comm.onMsg = msg => this._onMsg(msg.content.data);
    comm.onClose = () => {
      if (this._comm === comm) {
        this._reset();
      }
    };
    this._comm = comm;
    comm.open({ version: VERSION }).done.catch(() => {
      if (this._comm === comm) {
        this._reset();
      }
    });
  }

  private _onMsg(data: unknown): void {
    const msg = parseKernelMessage(data);
    if (msg === null) {
      console.warn('jupyter-sessionpool: ignored a message', data);
      return;
    }
    switch (msg.type) {
      case 'snapshot':
        this._setState({ kind: 'pool', snapshot: msg, receivedAt: Date.now() });
        break;
      case 'no_pool':
        this._setState({ kind: 'empty' });
        break;
      case 'reply':
        this._settle(msg);
        break;
    }
  }

  private _settle(reply: IReply): void {
    const id = `${reply.request_id}`;
    const settle = this._pending.get(id);
    if (settle !== undefined) {
      this._pending.delete(id);
      settle(reply);
    }
  }

  /**
   * A restart or death drops the comm (the frontend forgets the old kernel's
   * comms); once the restarted kernel is idle, look for the beacon again, since
   * an extension loaded at kernel start opened it while nobody listened.
   */
  private _onStatus(_: Kernel.IKernelConnection, status: Kernel.Status): void {
    if (
      status === 'restarting' ||
      status === 'autorestarting' ||
      status === 'dead'
    ) {
      this._reset();
      this._rediscover = status !== 'dead';
    } else if (status === 'idle' && this._rediscover) {
      this._rediscover = false;
      void this._discover();
    }
  }

  /** Forget the comm: its kernel restarted, died or closed it. */
  private _reset(): void {
    this._comm = null;
    const failed: IReply = {
      type: 'reply',
      request_id: null,
      ok: false,
      error: 'the kernel went away'
    };
    this._pending.forEach(settle => settle(failed));
    this._pending.clear();
    this._setState({ kind: 'unavailable' });
  }

  private _setState(state: KernelPoolState): void {
    this._state = state;
    this._stateChanged.emit(state);
  }

  /** The kernel opened its beacon comm: `%load_ext` just ran. */
  private _onBeacon = (): void => this._open();
  private _kernel: Kernel.IKernelConnection;
  private _comm: Kernel.IComm | null = null;
  private _state: KernelPoolState = { kind: 'unavailable' };
  private _stateChanged = new Signal<this, KernelPoolState>(this);
  private _pending = new Map<string, (reply: IReply) => void>();
  private _requests = 0;
  private _rediscover = false;
  private _isDisposed = false;
}
