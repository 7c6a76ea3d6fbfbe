export type KeybrokerErrorCode = "popup_blocked" | "popup_closed" | "access_denied" | "timeout" | "invalid_response";
export declare class KeybrokerError extends Error {
    readonly code: KeybrokerErrorCode;
    constructor(code: KeybrokerErrorCode, message: string);
}
export interface RequestOpenAIAPIOptions {
    /** The broker's public URL, e.g. "https://keys.example.com". */
    broker: string;
    /** Scopes to ask for: chat, embeddings, images, audio, files, moderations, models, batches, fine_tuning (the owner decides; batches and fine_tuning start unticked). */
    scopes?: string[];
    /** Models the app needs; the owner can narrow the list. */
    models?: string[];
    /** Suggested monthly budget in USD; the owner decides. */
    budgetUSD?: number;
    /** Suggested requests-per-minute limit. */
    rpm?: number;
    /** Suggested expiry in days. */
    expiresInDays?: number;
    /** Give up after this long (default 5 minutes). */
    timeoutMs?: number;
}
export interface OpenAIAPIAccess {
    apiKey: string;
    baseURL: string;
    scope: string;
    expiresIn: number;
}
/**
 * Ask the person for access to the OpenAI API. Call it directly in a click handler: the
 * popup is opened before anything is awaited, so browsers do not block it.
 */
export declare function requestOpenAIAPI(options: RequestOpenAIAPIOptions): Promise<OpenAIAPIAccess>;
/** Sign the app out: the broker revokes the token at once (RFC 7009). */
export declare function revoke(apiKey: string, options: {
    broker: string;
}): Promise<void>;
