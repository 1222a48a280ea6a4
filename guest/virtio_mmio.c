/* virtio-mmio v2 discovery, feature negotiation and split virtqueues (driver side, polled). */
#include "virtio_mmio.h"

#include <stddef.h>

#include "config.h"
#include "format.h"
#include "io.h"
#include "serial.h"

/* How long the driver waits for a buffer it needs back before it declares the device dead. */
#define WAIT_TIMEOUT_MS 2000

static uint32_t reg_read(const struct virtio_dev *dev, unsigned offset)
{
    return mmio_read32(dev->base + offset);
}

static void reg_write(const struct virtio_dev *dev, unsigned offset, uint32_t value)
{
    mmio_write32(dev->base + offset, value);
}

bool virtio_find(const struct boot_info *info, uint32_t device_id, struct virtio_dev *dev)
{
    unsigned count = info->device_count < BOOT_INFO_MAX_DEVICES ? info->device_count : BOOT_INFO_MAX_DEVICES;
    for (unsigned i = 0; i < count; i++) {
        const struct boot_device *d = &info->devices[i];
        /* Ferry's devices are 4 KiB apart, QEMU microvm's transports 512 bytes. */
        if (d->kind != 1 || d->size < 0x200 || (d->base & 0x1ff) != 0)
            continue;
        struct virtio_dev probe = {.base = d->base, .tsc_khz = info->tsc_khz};
        if (reg_read(&probe, VIRTIO_MMIO_MAGIC_VALUE) != VIRTIO_MMIO_MAGIC)
            continue;
        if (reg_read(&probe, VIRTIO_MMIO_DEVICE_ID) != device_id)
            continue;
        probe.device_id = device_id;
        *dev = probe;
        return true;
    }
    return false;
}

void virtio_fail(struct virtio_dev *dev, const char *msg)
{
    if (dev->broken)
        return;
    dev->broken = true;
    char line[320];
    struct out out;
    out_init(&out, line, sizeof(line));
    out_str(&out, "{\"event\":\"virtio_error\"");
    out_field_u64(&out, "base", dev->base);
    out_field_u64(&out, "device_id", dev->device_id);
    out_field_string(&out, "error", msg);
    out_char(&out, '}');
    console_write_line(out.buf, out.len);
    /* Tell the device we gave up; from now on the driver neither notifies nor reads its rings. */
    reg_write(dev, VIRTIO_MMIO_STATUS, reg_read(dev, VIRTIO_MMIO_STATUS) | VIRTIO_STATUS_FAILED);
}

const char *virtio_start(struct virtio_dev *dev, uint64_t *offered)
{
    if (reg_read(dev, VIRTIO_MMIO_VERSION) != 2)
        return "virtio-mmio version is not 2 (legacy devices are not supported)";
    reg_write(dev, VIRTIO_MMIO_STATUS, 0);
    for (unsigned tries = 0; reg_read(dev, VIRTIO_MMIO_STATUS) != 0; tries++) {
        if (tries == 1000)
            return "device does not reset (status stays non-zero)";
        cpu_relax();
    }
    reg_write(dev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    reg_write(dev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    reg_write(dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    uint64_t features = reg_read(dev, VIRTIO_MMIO_DEVICE_FEATURES);
    reg_write(dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    features |= (uint64_t)reg_read(dev, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
    *offered = features;
    return NULL;
}

const char *virtio_set_features(struct virtio_dev *dev, uint64_t accepted)
{
    if ((accepted & (1ull << VIRTIO_F_VERSION_1)) == 0)
        return "VERSION_1 not offered by the device or masked by the driver";
    reg_write(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    reg_write(dev, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)accepted);
    reg_write(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    reg_write(dev, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(accepted >> 32));
    uint32_t status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
    reg_write(dev, VIRTIO_MMIO_STATUS, status);
    if ((reg_read(dev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK) == 0)
        return "device did not accept the features (FEATURES_OK cleared)";
    dev->features = accepted;
    return NULL;
}

const char *virtq_setup(struct virtio_dev *dev, struct virtq *q, uint16_t index, uint64_t memory)
{
    reg_write(dev, VIRTIO_MMIO_QUEUE_SEL, index);
    if (reg_read(dev, VIRTIO_MMIO_QUEUE_READY) != 0)
        return "queue already ready before setup";
    uint32_t max = reg_read(dev, VIRTIO_MMIO_QUEUE_NUM_MAX);
    if (max < 2)
        return "queue missing or smaller than 2 entries (QueueNumMax)";
    uint16_t size = VIRTQ_MAX_SIZE;
    while (size > max)
        size /= 2; /* split rings want a power of 2 */

    q->dev = dev;
    q->index = index;
    q->size = size;
    q->desc = (struct vring_desc *)memory;
    q->avail = (struct vring_avail *)(memory + PAGE_SIZE);
    q->used = (struct vring_used *)(memory + 2 * PAGE_SIZE);
    q->scratch = (uint8_t *)(memory + 3 * PAGE_SIZE);
    q->num_free = size;
    q->free_head = 0;
    q->avail_idx = 0;
    q->last_used = 0;
    q->in_flight = 0;
    for (uint16_t i = 0; i < size; i++) {
        q->free_next[i] = (uint16_t)(i + 1);
        q->chain_len[i] = 0;
    }

    reg_write(dev, VIRTIO_MMIO_QUEUE_NUM, size);
    reg_write(dev, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)memory);
    reg_write(dev, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(memory >> 32));
    reg_write(dev, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)(memory + PAGE_SIZE));
    reg_write(dev, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)((memory + PAGE_SIZE) >> 32));
    reg_write(dev, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)(memory + 2 * PAGE_SIZE));
    reg_write(dev, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)((memory + 2 * PAGE_SIZE) >> 32));
    reg_write(dev, VIRTIO_MMIO_QUEUE_READY, 1);
    return NULL;
}

void virtio_driver_ok(struct virtio_dev *dev)
{
    reg_write(dev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                           VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
}

uint32_t virtio_config_read32(struct virtio_dev *dev, unsigned offset)
{
    return reg_read(dev, VIRTIO_MMIO_CONFIG + offset);
}

void virtio_config_write32(struct virtio_dev *dev, unsigned offset, uint32_t value)
{
    reg_write(dev, VIRTIO_MMIO_CONFIG + offset, value);
}

uint32_t virtio_status(struct virtio_dev *dev)
{
    return reg_read(dev, VIRTIO_MMIO_STATUS);
}

void virtio_isr_ack(struct virtio_dev *dev, uint32_t isr)
{
    reg_write(dev, VIRTIO_MMIO_INTERRUPT_ACK, isr);
}

bool virtq_add(struct virtq *q, const struct virtq_buf *bufs, unsigned count, uint64_t cookie)
{
    if (count == 0 || count > q->num_free)
        return false;
    uint16_t head = q->free_head, index = head;
    uint32_t writable = 0;
    for (unsigned i = 0; i < count; i++) {
        uint16_t next = q->free_next[index];
        struct vring_desc *desc = &q->desc[index];
        desc->addr = bufs[i].addr;
        desc->len = bufs[i].len;
        desc->flags = (uint16_t)((bufs[i].writable ? VIRTQ_DESC_F_WRITE : 0) |
                                 (i + 1 < count ? VIRTQ_DESC_F_NEXT : 0));
        desc->next = i + 1 < count ? next : 0;
        if (bufs[i].writable)
            writable += bufs[i].len;
        if (i + 1 < count)
            index = next;
        else
            q->free_head = next;
    }
    q->num_free = (uint16_t)(q->num_free - count);
    q->chain_len[head] = (uint16_t)count;
    q->writable[head] = writable;
    q->cookie[head] = cookie;
    q->in_flight++;
    q->avail->ring[q->avail_idx & (q->size - 1)] = head;
    /* The descriptors and the ring entry before the index that publishes them (x86 keeps stores in order; the
     * release store keeps the compiler from reordering). */
    q->avail_idx++;
    store_release(&q->avail->idx, q->avail_idx);
    return true;
}

void virtq_kick(struct virtq *q)
{
    if (!q->dev->broken)
        reg_write(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

static int ring_fault(struct virtq *q, const char *what, uint64_t value)
{
    char msg[160];
    struct out out;
    out_init(&out, msg, sizeof(msg));
    out_str(&out, "queue ");
    out_u64(&out, q->index);
    out_str(&out, ": ");
    out_str(&out, what);
    out_str(&out, " (");
    out_u64(&out, value);
    out_char(&out, ')');
    out_terminate(&out);
    virtio_fail(q->dev, msg);
    return -1;
}

int virtq_get_used(struct virtq *q, uint64_t *cookie, uint32_t *len)
{
    if (q->dev->broken)
        return -1;
    uint16_t used_idx = load_acquire(&q->used->idx);
    uint16_t pending = (uint16_t)(used_idx - q->last_used);
    if (pending == 0)
        return 0;
    if (pending > q->in_flight)
        return ring_fault(q, "used index runs ahead of the buffers in flight", pending);
    struct vring_used_elem elem = q->used->ring[q->last_used & (q->size - 1)];
    if (elem.id >= q->size)
        return ring_fault(q, "used id out of range", elem.id);
    if (q->chain_len[elem.id] == 0)
        return ring_fault(q, "used id names no buffer in flight", elem.id);
    if (elem.len > q->writable[elem.id])
        return ring_fault(q, "used length exceeds the buffer's writable bytes", elem.len);
    q->last_used++;

    /* Return the chain's descriptors to the free list, walking the driver's own links. */
    uint16_t head = (uint16_t)elem.id, tail = head;
    for (uint16_t i = 1; i < q->chain_len[head]; i++)
        tail = q->free_next[tail];
    q->free_next[tail] = q->free_head;
    q->free_head = head;
    q->num_free = (uint16_t)(q->num_free + q->chain_len[head]);
    q->chain_len[head] = 0;
    q->in_flight--;
    *cookie = q->cookie[head];
    *len = elem.len;
    return 1;
}

bool virtq_wait_used(struct virtq *q, uint64_t *cookie, uint32_t *len)
{
    /* Counts guest running time in steps of at most 1 ms, so a VM paused by the host does not time out. */
    uint64_t tick = q->dev->tsc_khz, waited = 0, last = rdtsc();
    for (;;) {
        int got = virtq_get_used(q, cookie, len);
        if (got != 0)
            return got > 0;
        cpu_relax();
        uint64_t now = rdtsc();
        waited += now - last < tick ? now - last : tick;
        last = now;
        if (waited > WAIT_TIMEOUT_MS * tick) {
            ring_fault(q, "no buffer returned within this many ms", WAIT_TIMEOUT_MS);
            return false;
        }
    }
}
