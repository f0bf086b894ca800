//! The one image jobs run in: pulled (or found in the cache) once, then shared read-only.

use std::sync::Arc;

use ci_rootfs::{Image, ImageRef, PullOptions, Store};

pub struct ImageProvider {
    store: Store,
    reference: ImageRef,
    options: PullOptions,
    current: tokio::sync::Mutex<Option<Arc<Image>>>,
}

impl ImageProvider {
    pub fn new(store: Store, reference: ImageRef, options: PullOptions) -> ImageProvider {
        ImageProvider {
            store,
            reference,
            options,
            current: tokio::sync::Mutex::new(None),
        }
    }

    pub fn reference(&self) -> &ImageRef {
        &self.reference
    }

    /// The image, from memory, the cache (no network) or the registry, in that order. A
    /// failed pull is not remembered: the next job tries again.
    pub async fn get(&self) -> Result<Arc<Image>, ci_rootfs::Error> {
        let mut current = self.current.lock().await;
        if let Some(image) = &*current {
            return Ok(image.clone());
        }
        // The cache is a few small files, read off the async threads; a pull is the rare case.
        let cached = {
            let (store, reference) = (self.store.clone(), self.reference.clone());
            tokio::task::spawn_blocking(move || store.cached(&reference))
                .await
                .unwrap_or(Ok(None))?
        };
        let image = match cached {
            Some(image) => Arc::new(image),
            None => Arc::new(self.store.pull(&self.reference, &self.options).await?),
        };
        tracing::info!(image = %self.reference, digest = %image.manifest_digest, rootfs = %image.rootfs.display(), "image ready");
        *current = Some(image.clone());
        Ok(image)
    }
}
